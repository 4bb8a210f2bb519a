"""Needle in a haystack as LongLLaDA / UltraLLaDA ran it (OpenCompass NeedleBench "origin").

A grid of context lengths x needle depths x repeats. Per repeat a needle is drawn (seeded) and the
haystack documents are shuffled (seeded); the haystack is cut to length - length_buffer - needle
tokens, the needle goes in at token ⌊n·depth/100⌋ wrapped in newlines, and the prompt ends with
the answer's opening words so a base model completes it. Scores: 100 when the keyword is in the
output, else 0.2·100·(1 − Levenshtein/longer length) against the needle (NeedleBench), and plain
exact match of the completion. Outputs in the workdir: niah_results.json (grid, per-length and
overall means, every cell), niah_results.csv, niah.png (the length x depth heatmap) and
niah_cells.jsonl (finished cells, for resuming).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import numpy as np

from lladax.config import ConfigError, choice, from_section
from lladax.evals import haystack, metrics, oracles, plots, runner

GRIDS = {
    # LongLLaDA Fig. 2/6: 2K-32K, depths 0-100 step 10, 10 repeats, gen 32, block 32, steps 32.
    'longllada': dict(lengths=(2000, 4000, 8000, 16000, 24000, 32000),
                      depths=tuple(float(d) for d in range(0, 101, 10)), repeats=10, steps=32),
    # UltraLLaDA Fig. 1: 8K-128K in 8K steps, same depths and repeats, steps 16.
    'ultrallada': dict(lengths=tuple(8192 * k for k in range(1, 17)),
                       depths=tuple(float(d) for d in range(0, 101, 10)), repeats=10, steps=16),
    'custom': dict(lengths=(), depths=tuple(float(d) for d in range(0, 101, 10)), repeats=1,
                   steps=0),
}

TEMPLATE = ('You are an intelligent AI assistant skilled in answering user questions.\n'
            'Please keep your answers concise and clear. Do not talk about irrelevant topics or '
            'repeat your answers.\nThe document given to you by the user is {context}\n\n'
            'Now, the question is: {question}\nAnswer from the document by completing this '
            'sentence.\n{stem}')

# Built-in needles: invented facts no corpus contains. `stem` opens the answer (the prompt ends
# with it) and `keyword` is what a correct completion must contain.
NEEDLES = (
    dict(needle='The secret ingredient in Grandma Ilse\'s winter soup is smoked paprika.',
         question='What is the secret ingredient in Grandma Ilse\'s winter soup?',
         stem='The secret ingredient in Grandma Ilse\'s winter soup is', keyword='smoked paprika'),
    dict(needle='The first lighthouse on the island of Varnholm was painted sea green.',
         question='What colour was the first lighthouse on the island of Varnholm painted?',
         stem='The first lighthouse on the island of Varnholm was painted', keyword='sea green'),
    dict(needle='The password to the old observatory on Crane Hill is amber falcon.',
         question='What is the password to the old observatory on Crane Hill?',
         stem='The password to the old observatory on Crane Hill is', keyword='amber falcon'),
    dict(needle='The champion of the 1911 Lindqvist chess cup was a baker named Otto Brill.',
         question='Who was the champion of the 1911 Lindqvist chess cup?',
         stem='The champion of the 1911 Lindqvist chess cup was', keyword='Otto Brill'),
    dict(needle='The rare orchid found in the Kessel valley smells of fresh cinnamon.',
         question='What does the rare orchid found in the Kessel valley smell of?',
         stem='The rare orchid found in the Kessel valley smells of', keyword='fresh cinnamon'),
    dict(needle='The mascot of the Port Elvey rowing club is a purple walrus.',
         question='What is the mascot of the Port Elvey rowing club?',
         stem='The mascot of the Port Elvey rowing club is', keyword='purple walrus'),
    dict(needle='The hidden treasure of Captain Morrow was buried under the north windmill.',
         question='Where was the hidden treasure of Captain Morrow buried?',
         stem='The hidden treasure of Captain Morrow was buried', keyword='north windmill'),
    dict(needle='The favourite song of the village of Dunmarrow is called Copper Rain.',
         question='What is the favourite song of the village of Dunmarrow called?',
         stem='The favourite song of the village of Dunmarrow is called', keyword='Copper Rain'),
    dict(needle='The giant clock in Tessaly square was built by the engineer Mara Quint.',
         question='Who built the giant clock in Tessaly square?',
         stem='The giant clock in Tessaly square was built by', keyword='Mara Quint'),
    dict(needle='The oldest tree in Harrowdeep forest is a silver birch named Old Wendel.',
         question='What is the oldest tree in Harrowdeep forest?',
         stem='The oldest tree in Harrowdeep forest is', keyword='silver birch'),
)


@dataclasses.dataclass(frozen=True)
class NiahConfig:
  """`config.niah`. Fields left empty (0 or ()) take the `grid` preset's value."""
  grid: str = 'longllada'         # longllada (2K-32K, steps 32) | ultrallada (8K-128K, steps 16)
                                  # | custom (give lengths)
  lengths: tuple[int, ...] = ()   # context lengths in counted tokens
  depths: tuple[float, ...] = ()  # needle depths, percent of the haystack
  repeats: int = 0                # needle/haystack draws per (length, depth)
  steps: int = 0                  # sampler steps (capped at gen_length)
  gen_length: int = 32            # tokens decoded after the prompt (rounded up to blocks)
  block_length: int = 32
  haystack: str = ''              # glob(s) of local text (.txt files, .jsonl records with a
                                  # 'text' field); '' = generated prose
  needles: str = ''               # a .jsonl of needles (fields below, or NeedleBench's
                                  # needles.jsonl); '' = the built-in ones
  language: str = 'English'       # needle records whose 'language' differs are skipped
  count_tokenizer: str = ''       # count lengths in this local tokenizer file (.tiktoken,
                                  # .model, tokenizer.json); '' = the model's tokens
  length_buffer: int = 600        # tokens of each length left for instructions and answer
                                  # (NeedleBench's 600); the haystack gets the rest
  template: str = TEMPLATE        # the prompt: {context}, {question}, {stem} (ending with {stem}
                                  # lets a base model complete the answer)
  separator: str = '\n'           # wrapped around the needle
  align_to: str = ''              # '' inserts at the exact token (NeedleBench); '.' moves the
                                  # needle and the haystack's end back to the previous sentence
                                  # end (gkamradt)
  seed: int = 0                   # repeat r draws with seed + r

  def __post_init__(self):
    choice(self.grid, tuple(GRIDS), 'config.niah.grid')
    if self.grid == 'custom' and not self.lengths:
      raise ConfigError("config.niah.grid='custom' needs config.niah.lengths, e.g. "
                        '"(1000, 2000)".')
    for d in self.resolved('depths'):
      if not 0 <= d <= 100:
        raise ConfigError(f'config.niah.depths has {d}; depths are percentages in [0, 100].')
    for length in self.resolved('lengths'):
      if length <= self.length_buffer:
        raise ConfigError(f'config.niah.lengths has {length}, not above length_buffer='
                          f'{self.length_buffer}; lower config.niah.length_buffer.')
    for field in ('{context}', '{stem}'):
      if field not in self.template:
        raise ConfigError(f'config.niah.template lacks {field}; it needs {{context}} and '
                          '{stem} ({question} is optional).')

  def resolved(self, name: str):
    value = getattr(self, name)
    return value or GRIDS[self.grid][name]


def _stem_from_format(question: str) -> tuple[str, str]:
  """NeedleBench questions end "Please answer in the format '<stem> ____.'": LongLLaDA drops
  the instruction and ends the prompt with the stem instead."""
  found = re.search(r"\s*Please answer in the format\s*['\"‘“](.*?)_{2,}", question)
  if not found:
    return question.strip(), ''
  return question[:found.start()].strip(), found.group(1).strip()


def needle_record(raw: dict, where: str) -> dict:
  """A needle {needle, question, stem, keyword, answer} from our fields or NeedleBench's
  (retrieval_question, gold_standard_answer, keyword or arg2)."""
  needle = raw.get('needle')
  question = raw.get('question') or raw.get('retrieval_question') or ''
  stem = raw.get('stem') or ''
  if not stem:
    question, stem = _stem_from_format(question)
  keyword = raw.get('keyword') or raw.get('arg2') or raw.get('gold_standard_answer') or ''
  if not needle or not stem or not keyword:
    raise ConfigError(f'{where}: a needle needs "needle", "stem" (or a NeedleBench format '
                      f'question), "keyword" and usually "question"; got {sorted(raw)}.')
  answer = raw.get('answer') or (needle[len(stem):].strip() if needle.startswith(stem)
                                 else keyword)
  return dict(needle=needle, question=question, stem=stem, keyword=keyword, answer=answer)


def load_needles(cfg: NiahConfig) -> list[dict]:
  if not cfg.needles:
    return [needle_record(n, 'built-in') for n in NEEDLES]
  if not os.path.exists(cfg.needles):
    raise ConfigError(f'config.niah.needles={cfg.needles!r} does not exist; give a .jsonl of '
                      'needles or "" for the built-in ones.')
  out = []
  with open(cfg.needles, encoding='utf-8') as f:
    for i, line in enumerate(f):
      if line.strip():
        raw = json.loads(line)
        if raw.get('language', cfg.language) == cfg.language:
          out.append(needle_record(raw, f'{cfg.needles} line {i + 1}'))
  if not out:
    raise ConfigError(f'{cfg.needles} has no {cfg.language} needle; set config.niah.language.')
  return out


class Builder:
  """Prompts for cells: one shuffled haystack per repeat (tokenised once, cut per length)."""

  def __init__(self, cfg: NiahConfig, needles: list[dict], docs: list[str], counter):
    self.cfg, self.needles, self.docs, self.counter = cfg, needles, docs, counter
    self.max_length = max(cfg.resolved('lengths'))
    self._hay: dict[int, tuple[str, list[int]]] = {}

  def needle(self, repeat: int) -> int:
    return int(np.random.default_rng(self.cfg.seed + repeat).integers(len(self.needles)))

  def haystack(self, repeat: int):
    if repeat not in self._hay:
      self._hay[repeat] = haystack.haystack_text(self.docs, self.max_length, self.counter,
                                                 self.cfg.seed + repeat)
    return self._hay[repeat]

  def cell(self, length: int, depth: float, repeat: int) -> dict:
    """{'prompt', 'needle' (its index), 'context', 'needle_offset', 'haystack_tokens'}."""
    index = self.needle(repeat)
    n = self.needles[index]
    text, starts = self.haystack(repeat)
    wrapped = f'{self.cfg.separator}{n["needle"]}{self.cfg.separator}'
    n_hay = max(0, length - self.cfg.length_buffer - len(self.counter.encode(wrapped)))
    cut = haystack.prefix(text, starts, n_hay)
    kept = starts[:n_hay]
    if self.cfg.align_to and self.cfg.align_to in cut:
      # The haystack ends where a unit does too, not inside a sentence or a word.
      cut = cut[:cut.rfind(self.cfg.align_to) + len(self.cfg.align_to)]
      kept = [s for s in kept if s < len(cut)]
    context, offset = haystack.insert(cut, kept, n['needle'], depth, self.cfg.separator,
                                      self.cfg.align_to)
    prompt = self.cfg.template.format(context=context, question=n['question'], stem=n['stem'])
    return dict(prompt=prompt, needle=index, context=context, needle_offset=offset,
                haystack_tokens=len(kept))


def cells(cfg: NiahConfig) -> list[dict]:
  # Ordered by length then repeat, so a batch shares a length and a haystack.
  return [dict(length=int(l), depth=float(d), repeat=r)
          for l in sorted(cfg.resolved('lengths')) for r in range(cfg.resolved('repeats'))
          for d in cfg.resolved('depths')]


def summarise(cfg: NiahConfig, store: runner.ResultStore) -> dict:
  lengths = sorted(int(l) for l in cfg.resolved('lengths'))
  depths = [float(d) for d in cfg.resolved('depths')]
  all_cells = cells(cfg)
  rows = [dict(c, **store.get(c)) for c in all_cells]

  def grid(field):
    return [[runner.mean(r[field] for r in rows if r['length'] == l and r['depth'] == d)
             for d in depths] for l in lengths]

  return dict(lengths=lengths, depths=depths, repeats=cfg.resolved('repeats'),
              grid={'score': grid('score'), 'exact': grid('exact')},
              by_length={str(l): runner.mean(r['score'] for r in rows if r['length'] == l)
                         for l in lengths},
              overall=runner.mean(r['score'] for r in rows),
              overall_exact=runner.mean(r['exact'] for r in rows), cells=rows)


def run(config, generator: runner.Generator | None = None) -> dict:
  """The eval_niah job; `generator` replaces the model (tests, oracles)."""
  cfg = from_section(NiahConfig, config.get('niah'), 'config.niah')
  ecfg = runner.eval_config(config)
  paths = runner.output_paths(config, ecfg, 'niah')
  needles = load_needles(cfg)
  generator, tok, info = runner.setup(config, ecfg, generator, lambda: oracles.niah(needles))
  counter, counted_in = haystack.counting_tokenizer(cfg.count_tokenizer, tok,
                                                    'config.niah.count_tokenizer')
  if cfg.haystack:
    docs, hay_source = haystack.read_documents(cfg.haystack, 'config.niah.haystack'), cfg.haystack
  else:
    haystack.warn_generated('config.niah.haystack')
    docs, hay_source = haystack.generated_documents(cfg.seed), 'generated'
  scfg = runner.sampler_settings(config, **runner.decode_settings(
      cfg.gen_length, cfg.block_length, cfg.resolved('steps'), 'config.niah'))
  settings = dict(info, sampler=dataclasses.asdict(scfg), counted_in=counted_in,
                  haystack=hay_source, needles=cfg.needles or 'built-in',
                  template=cfg.template, length_buffer=cfg.length_buffer,
                  separator=cfg.separator, align_to=cfg.align_to, seed=cfg.seed)
  store = runner.ResultStore(paths['cells'], settings, ecfg.resume)
  builder = Builder(cfg, needles, docs, counter)

  def compute(batch):
    built = [builder.cell(c['length'], c['depth'], c['repeat']) for c in batch]
    preds = generator.generate([b['prompt'] for b in built], scfg,
                               seed=cfg.seed + batch[0]['repeat'])
    out = []
    for b, pred in zip(built, preds):
      n = needles[b['needle']]
      out.append(dict(prediction=pred, needle=b['needle'],
                      score=metrics.needle_score(pred, n['keyword'], n['needle']),
                      exact=metrics.exact_match(pred, n['answer']),
                      context_tokens=len(counter.encode(b['context'])),
                      prompt_tokens=len(tok.encode(b['prompt']))))
    return out

  try:
    runner.run_cells(cells(cfg), store, compute, ecfg.batch_size, 'niah',
                     group=lambda c: c['length'])
  finally:
    store.close()
  summary = summarise(cfg, store)
  result = dict(job='eval_niah', **settings, grid_preset=cfg.grid, **summary)
  runner.write_json(paths['json'], result)
  runner.write_csv(paths['csv'], [
      {k: r[k] for k in ('length', 'depth', 'repeat', 'score', 'exact', 'context_tokens',
                         'prompt_tokens', 'prediction')} for r in summary['cells']])
  name = '/'.join(str(info.get('checkpoint')).rstrip('/').split('/')[-2:])
  title = f'NIAH  {name}  overall {summary["overall"]:.1f}'
  result['png'] = runner.try_plot(plots.heatmap, summary['grid']['score'], summary['lengths'],
                                  summary['depths'], paths['png'], title)
  logging.info('NIAH overall %.2f (exact %.2f); by length %s; results in %s', summary['overall'],
               summary['overall_exact'], summary['by_length'], paths['json'])
  print(f'NIAH overall {summary["overall"]:.2f}  exact {summary["overall_exact"]:.2f}  '
        + '  '.join(f'{l}: {v:.1f}' for l, v in summary['by_length'].items()))
  return result
