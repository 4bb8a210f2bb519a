"""Needle in a haystack: NeedleBench "origin" as LongLLaDA / UltraLLaDA ran it, or lladax's reading.

A grid of context lengths x needle depths x repeats; `config.niah.protocol` says how a cell's
prompt is built and scored:

- 'longllada' (default) / 'ultrallada': the papers' patched OpenCompass NeedleBench origin.py,
  English, token for token. Needles come from NeedleBench's needles.jsonl and the haystack from
  its en_un_asr.jsonl (local files), lengths are counted in cl100k_base through tiktoken (a local
  .tiktoken file). Repeat r draws its needle with Python's random.seed(r); random.choice over the
  English records, and its document order with random.seed(r); random.shuffle applied to repeat
  r-1's order (the shuffles build on each other, from the file's order). Every document is
  tokenized on its own, the token lists are concatenated (no separator) and cut to length - 600 -
  needle tokens, the needle's tokens ('\n' needle '\n') go in at token int(n * (depth / 100)) and
  the whole list is decoded once (a cut inside a character shows as U+FFFD). The prompt is the
  official preamble, "The document given to you by the user is {context}", and the question with
  its format instruction cut off, so it ends with the answer's stem ("... the Moon was"). The
  score is NeedleBench's: 100 when the keyword (arg2) is in the output, else 0.2 x the Levenshtein
  similarity of output and needle, both without whitespace. Per length, the mean over depths of
  the cells' means; Overall, the mean of those (the papers' summarizer). The two protocols differ
  only in the grid: LongLLaDA 2K-32K with 32 steps, UltraLLaDA 8K-128K in 8K steps with 16.
- 'lladax': this project's own reading, kept as an option: built-in needles (or any needle file),
  any local text or generated prose joined by blank lines, lengths in any tokenizer, numpy-seeded
  draws, insertion at a character offset of the undecoded text, a template that adds "Answer from
  the document by completing this sentence.", and exact match beside NeedleBench's score.

Outputs in the workdir: niah_results.json (protocol, generation settings and deviations from the
protocol, grid, per-length and overall means, every cell), niah_results.csv, niah.png (the
length x depth heatmap) and niah_cells.jsonl (finished cells, for resuming).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re

import numpy as np

from lladax import sampler
from lladax.config import ConfigError, Recipe, choice, parse
from lladax.evals import (eval_settings, haystack, loading, metrics, model_calls, oracles, plots,
                          protocols, results)

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
# The grid a protocol runs when config.niah.grid is ''.
PROTOCOL_GRID = {'longllada': 'longllada', 'ultrallada': 'ultrallada', 'lladax': 'longllada'}

# What both papers' NeedleBench configs and model entries fix besides the grid: the wrapper's
# max_out_len 32 (rounded up to whole blocks) with block_length 32, length_buffer 600, English.
PAPER_GEN_LENGTH = 32
PAPER_BLOCK_LENGTH = 32
PAPER_LENGTH_BUFFER = 600
PAPER_LANGUAGE = 'English'

# NeedleBench origin's English prompt (guide=True, position 'End').
PAPER_PREAMBLE = ('You are an intelligent AI assistant skilled in answering user questions.\n'
                  'Please keep your answers concise and clear. Do not talk about irrelevant topics '
                  'or repeat your answers.\nThe document given to you by the user is ')
PAPER_ASK = '\n\nNow, the question is: '
PAPER_GUIDE = ('Before answering, please consider what in the document is most relevant to this '
               'question. ')
PAPER_FORMAT = 'Please answer in the format'
# The question loses "Please answer in the format '" and its last 10 characters, the blank and
# closing quote of NeedleBench's "... was________.'", so the prompt ends with the stem.
PAPER_CUT = 10

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
  """`config.niah`. Fields left empty (0 or ()) take the grid preset's value."""
  protocol: str = 'longllada'     # longllada | ultrallada (the papers' NeedleBench origin, their
                                  # grids) | lladax (this project's reading; see the module doc)
  grid: str = ''                  # '' = the protocol's (lladax: longllada's) | longllada (2K-32K,
                                  # steps 32) | ultrallada (8K-128K, steps 16) | custom (give
                                  # lengths; under a paper's protocol the rest stays the paper's);
                                  # values other than the protocol's are recorded as deviations
  lengths: tuple[int, ...] = ()   # context lengths in counted tokens
  depths: tuple[float, ...] = ()  # needle depths, percent of the haystack
  repeats: int = 0                # needle/haystack draws per (length, depth)
  steps: int = 0                  # sampler steps (capped at gen_length)
  gen_length: int = 32            # tokens decoded after the prompt (rounded up to blocks)
  block_length: int = 32
  haystack: str = ''              # papers: NeedleBench's en_un_asr.jsonl (required); lladax:
                                  # glob(s) of local text (.txt files, .jsonl records with a
                                  # 'text' field), '' = generated prose
  needles: str = ''               # papers: NeedleBench's needles.jsonl (required); lladax: a
                                  # .jsonl of needles (fields below, or NeedleBench's), '' = the
                                  # built-in ones
  language: str = 'English'       # needle records whose 'language' differs are skipped (the
                                  # papers: English only)
  count_tokenizer: str = ''       # papers: the local cl100k_base.tiktoken (required); lladax:
                                  # count lengths in this local tokenizer file (.tiktoken, .model,
                                  # tokenizer.json), '' = the model's tokens
  length_buffer: int = 600        # tokens of each length left for instructions and answer
                                  # (NeedleBench's 600); the haystack gets the rest
  # lladax protocol only (the papers' prompt, needle wrapping and draws are fixed):
  template: str = TEMPLATE        # the prompt: {context}, {question}, {stem} (ending with {stem}
                                  # lets a base model complete the answer)
  separator: str = '\n'           # wrapped around the needle
  align_to: str = ''              # '' inserts at the exact token (NeedleBench); '.' moves the
                                  # needle and the haystack's end back to the previous sentence
                                  # end (gkamradt)
  seed: int = 0                   # repeat r draws with seed + r

  def __post_init__(self):
    protocols.check(self.protocol, 'config.niah.protocol')
    if self.grid:
      choice(self.grid, tuple(GRIDS), 'config.niah.grid')
    if self.grid_name == 'custom' and not self.lengths:
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
    if self.paper:
      self._check_paper()

  def _check_paper(self):
    defaults = NiahConfig.__dataclass_fields__
    for name in ('template', 'separator', 'align_to', 'seed'):
      if getattr(self, name) != defaults[name].default:
        raise ConfigError(f'config.niah.{name} applies to protocol lladax only; protocol '
                          f"{self.protocol} builds NeedleBench's own prompt and draws, so leave "
                          'it unset or set config.niah.protocol=lladax.')
    if self.language != PAPER_LANGUAGE:
      raise ConfigError(f'config.niah.language={self.language!r}: the papers ran NeedleBench in '
                        f'English only; set it to English or config.niah.protocol=lladax.')
    for d in self.resolved('depths'):
      if d != int(d):
        raise ConfigError(f'config.niah.depths has {d}; NeedleBench\'s depths are whole '
                          'percentages, so give whole numbers.')

  @property
  def paper(self) -> bool:
    return self.protocol in protocols.PAPERS

  @property
  def grid_name(self) -> str:
    return self.grid or PROTOCOL_GRID[self.protocol]

  def resolved(self, name: str):
    value = getattr(self, name)
    grid = self.grid_name
    if grid == 'custom' and self.paper:
      grid = self.protocol  # custom lengths; depths, repeats and steps as the paper unless given
    return value or GRIDS[grid][name]


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
  with open(cfg.needles, 'rb') as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        raw = json.loads(line.decode('utf-8'))
      except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f'{cfg.needles} line {i + 1} is not a UTF-8 JSON record; fix or drop '
                          'that line of config.niah.needles.') from None
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


# ---------------------------------------------------------------------------------------------
# The papers' protocol: NeedleBench origin as LongLLaDA's patched origin.py builds it


def paper_question(question: str, where: str) -> str:
  """The question as the papers' prompt ends: the guide sentence goes before NeedleBench's
  format instruction, then "Please answer in the format '" and the last 10 characters go, so
  "... Please answer in the format 'The X was________.'" ends as "... The X was"."""
  parts = question.split(PAPER_FORMAT)
  if len(parts) < 2:
    raise ConfigError(f'{where}: its retrieval_question lacks "{PAPER_FORMAT} \'...\'", which the '
                      "papers' prompt cuts off; use NeedleBench's needles.jsonl records.")
  guided = parts[0] + PAPER_GUIDE + PAPER_FORMAT + parts[1]
  return guided.replace(f"{PAPER_FORMAT} '", '')[:-PAPER_CUT]


def paper_prompt(context: str, question: str) -> str:
  # OpenCompass fills the template '{prompt}' with this text and then replaces '{answer}' (the
  # answer column, '' when generating) in the result, so that literal goes from the prompt.
  return f'{PAPER_PREAMBLE}{context}{PAPER_ASK}{question}'.replace('{answer}', '')


def paper_reference(needle: str, keyword: str) -> str:
  """NeedleBench's answer column: the wrapped needle, '*', the keyword."""
  return f'\n{needle}\n*{keyword}'


def paper_score(prediction: str, reference: str) -> float:
  """NeedleBench origin's evaluator (use_trim off) on one output: 100 when the keyword (the text
  after the reference's first '*') is in the raw output, else 0.2 x 100 x (1 - Levenshtein /
  the longer length) between output and needle (before the '*'), both without whitespace."""
  parts = reference.split('*')
  keyword, needle = parts[1], parts[0]
  pred = re.sub(r'\s+', '', prediction)
  needle = re.sub(r'\s+', '', needle)
  longest = max(len(pred), len(needle))
  score = 100 * (1 - metrics.levenshtein(pred, needle) / longest) if longest != 0 else 100
  return 100 if keyword in prediction else 0.2 * score


def paper_mean(scores) -> float:
  """A cell's score as the evaluator averages its repeats: summed in order, then divided."""
  total, n = 0, 0
  for score in scores:
    total += score
    n += 1
  return total / n if n else 0


def load_paper_needles(path: str, language: str = PAPER_LANGUAGE) -> list[dict]:
  """The `language` records of a NeedleBench needles.jsonl, in file order (draws index them)."""
  out = []
  for i, record in enumerate(haystack.read_records(path, 'config.niah.needles')):
    if 'language' not in record:
      raise ConfigError(f'{path} line {i + 1} has no "language"; config.niah.needles must be '
                        "NeedleBench's needles.jsonl.")
    if record['language'] == language:
      out.append(dict(record, line=i + 1))
  if not out:
    raise ConfigError(f'config.niah.needles={path!r} has no {language} needle; give NeedleBench\'s '
                      'needles.jsonl.')
  return out


class OriginBuilder:
  """Prompts of the papers' cells. Each document is tokenized once per job (when first needed),
  each repeat's document order is computed once, and each repeat's concatenated tokens grow
  only as far as its longest cell needs: a cell only cuts, inserts and decodes."""

  def __init__(self, needles: list[dict], records: list[dict], encoder, length_buffer: int,
               needles_path: str = 'needles', haystack_path: str = 'haystack'):
    self.needles, self.records, self.encoder = needles, records, encoder
    self.length_buffer = length_buffer
    self.needles_path, self.haystack_path = needles_path, haystack_path
    self._doc_tokens: dict[int, list[int]] = {}
    self._orders: list[list[int]] = []
    self._streams: dict[int, tuple[list[int], int]] = {}  # repeat -> (tokens, documents used)
    self._needle_tokens: dict[int, list[int]] = {}

  def _encode(self, text: str, where: str) -> list[int]:
    try:
      return self.encoder.encode_refusing_special(text)
    except ValueError:
      raise ConfigError(f'{where} holds a special token\'s text (such as <|endoftext|>), which the '
                        "papers' tiktoken encode refuses; remove it from that file.") from None

  def needle(self, repeat: int) -> int:
    """Index of repeat's needle: random.seed(repeat); random.choice(the English records)."""
    return random.Random(repeat).choice(range(len(self.needles)))

  def order(self, repeat: int) -> list[int]:
    """Document order of a repeat: the file's order shuffled with seed 0, that with seed 1, ...
    up to seed `repeat` (random.seed(c); random.shuffle(lines) on the same list)."""
    while len(self._orders) <= repeat:
      order = list(self._orders[-1]) if self._orders else list(range(len(self.records)))
      random.Random(len(self._orders)).shuffle(order)
      self._orders.append(order)
    return self._orders[repeat]

  def _document(self, index: int) -> list[int]:
    if index not in self._doc_tokens:
      where = f'{self.haystack_path} line {index + 1}'
      if 'text' not in self.records[index]:
        raise ConfigError(f'{where} has no "text"; config.niah.haystack must be NeedleBench\'s '
                          'en_un_asr.jsonl.')
      self._doc_tokens[index] = self._encode(self.records[index]['text'], where)
    return self._doc_tokens[index]

  def haystack_tokens(self, repeat: int, n: int) -> list[int]:
    """The first n tokens of the repeat's documents concatenated (all when they are fewer)."""
    tokens, used = self._streams.get(repeat, ([], 0))
    order = self.order(repeat)
    # As the official loop: at least one document, then until there are n tokens.
    while used < len(order) and (used == 0 or len(tokens) < n):
      tokens.extend(self._document(order[used]))
      used += 1
    self._streams[repeat] = (tokens, used)
    return tokens[:n]

  def needle_tokens(self, index: int) -> list[int]:
    if index not in self._needle_tokens:
      n = self.needles[index]
      self._needle_tokens[index] = self._encode(f'\n{n["needle"]}\n',
                                                f'{self.needles_path} line {n["line"]}')
    return self._needle_tokens[index]

  def question(self, index: int) -> str:
    n = self.needles[index]
    return paper_question(n['retrieval_question'], f'{self.needles_path} line {n["line"]}')

  def prepare(self, length: int, repeats: int) -> None:
    """Builds every repeat's haystack for `length` (the longest) up front: a file the official
    code would fail on fails here, before any decoding."""
    for r in range(repeats):
      index = self.needle(r)
      self.question(index)
      self.haystack_tokens(r, max(length - self.length_buffer - len(self.needle_tokens(index)), 0))

  def cell(self, length: int, depth: float, repeat: int) -> dict:
    """{'prompt', 'needle' (its index), 'reference', 'haystack_tokens', 'context_tokens',
    'needle_token' (where the needle's tokens start)}."""
    index = self.needle(repeat)
    needle = self.needle_tokens(index)
    target = max(length - self.length_buffer - len(needle), 0)
    hay = self.haystack_tokens(repeat, target)
    at = int(len(hay) * (depth / 100))
    context = self.encoder.decode(hay[:at] + needle + hay[at:])
    n = self.needles[index]
    return dict(prompt=paper_prompt(context, self.question(index)), needle=index,
                reference=paper_reference(n['needle'], n['arg2']), haystack_tokens=len(hay),
                context_tokens=len(hay) + len(needle), needle_token=at)

  def oracle_needles(self) -> list[dict]:
    """The needles as the oracle reads them off a prompt: the question as the prompt asks it."""
    out = []
    for i, n in enumerate(self.needles):
      try:
        out.append(dict(needle=n['needle'], question=self.question(i), answer=n['arg2']))
      except ConfigError:
        continue  # never drawn, or the job stops at it before the oracle runs
    return out


def load_origin(cfg: NiahConfig) -> tuple[OriginBuilder, list[str]]:
  """(builder, deviations): the papers' builder over the local NeedleBench files the settings
  name, and a length tokenizer other than cl100k_base named as a deviation."""
  encoder, deviations = haystack.cl100k(cfg.count_tokenizer, 'config.niah.count_tokenizer')
  needles = load_paper_needles(cfg.needles, cfg.language)
  for n in needles:
    for key in ('needle', 'retrieval_question', 'arg2'):
      if key not in n:
        raise ConfigError(f'{cfg.needles} line {n["line"]} has no "{key}"; config.niah.needles '
                          "must be NeedleBench's needles.jsonl.")
  records = haystack.read_records(cfg.haystack, 'config.niah.haystack')
  return OriginBuilder(needles, records, encoder, cfg.length_buffer, cfg.needles,
                       cfg.haystack), deviations


def paper_deviations(cfg: NiahConfig, scfg) -> list[str]:
  """The settings of a paper-protocol run that differ from what the paper ran."""
  grid = GRIDS[cfg.protocol]
  steps = eval_settings.decode_settings(PAPER_GEN_LENGTH, PAPER_BLOCK_LENGTH, grid['steps'], '')['steps']
  expected = dict(lengths=sorted(grid['lengths']), depths=sorted(grid['depths']),
                  repeats=grid['repeats'], length_buffer=PAPER_LENGTH_BUFFER)
  chosen = dict(lengths=sorted(cfg.resolved('lengths')), depths=sorted(cfg.resolved('depths')),
                repeats=cfg.resolved('repeats'), length_buffer=cfg.length_buffer)
  out = [f'config.niah.{k}={chosen[k]} (protocol {cfg.protocol}: {v})'
         for k, v in expected.items() if chosen[k] != v]
  decode = dict(gen_length=PAPER_GEN_LENGTH, block_length=PAPER_BLOCK_LENGTH, steps=steps)
  out += [f'sampler {k}={getattr(scfg, k)} (protocol {cfg.protocol}: {v})'
          for k, v in decode.items() if getattr(scfg, k) != v]
  return out + protocols.sampler_deviations(scfg, cfg.protocol)


# ---------------------------------------------------------------------------------------------
# The job


def cells(cfg: NiahConfig) -> list[dict]:
  # Ordered by length then repeat, so a batch shares a length and a haystack.
  return [dict(length=int(l), depth=float(d), repeat=r)
          for l in sorted(cfg.resolved('lengths')) for r in range(cfg.resolved('repeats'))
          for d in cfg.resolved('depths')]


def summarise(cfg: NiahConfig, rows: list[dict]) -> dict:
  lengths = sorted(int(l) for l in cfg.resolved('lengths'))
  depths = [float(d) for d in cfg.resolved('depths')]
  if cfg.paper:
    return dict(lengths=lengths, depths=depths, repeats=cfg.resolved('repeats'),
                **paper_summary(rows, lengths, depths), cells=rows)

  def grid(field):
    return [[results.mean(r[field] for r in rows if r['length'] == l and r['depth'] == d)
             for d in depths] for l in lengths]

  return dict(lengths=lengths, depths=depths, repeats=cfg.resolved('repeats'),
              grid={'score': grid('score'), 'exact': grid('exact')},
              by_length={str(l): results.mean(r['score'] for r in rows if r['length'] == l)
                         for l in lengths},
              overall=results.mean(r['score'] for r in rows),
              overall_exact=results.mean(r['exact'] for r in rows), cells=rows)


def paper_summary(rows: list[dict], lengths, depths) -> dict:
  """As the papers' NeedleBench summarizer: a cell is its dataset's score (the evaluator's mean
  over repeats), a length's score the mean over depths ("Average Depth Score"), Overall the mean
  over lengths of those. Summed as the summarizer's pandas does, to the last bit: a pivot
  table's column means left to right, then numpy's (pairwise) mean of those."""
  grid = [[paper_mean(r['score'] for r in rows if r['length'] == l and r['depth'] == d)
           for d in depths] for l in lengths]
  by_length = [float(paper_mean(row)) for row in grid]
  return dict(grid={'score': grid},
              by_length={str(l): v for l, v in zip(lengths, by_length)},
              overall=float(np.mean(np.asarray(by_length, np.float64))))


def _prompt_tokens(cfg: NiahConfig, generator, tok, generation: protocols.Generation,
                   prompt: str) -> int:
  """The prompt's length in model tokens: under the papers' protocols, the tokens the model is
  given; under lladax's, the text's tokens without BOS (what the replay's report has read)."""
  if not cfg.paper:
    return len(tok.encode(prompt))
  return len(model_calls.prompt_ids(generator, tok, generation, prompt))


def _lladax_job(recipe: Recipe, cfg: NiahConfig, ecfg, generator):
  """(generator, tok, info, build(cell) -> built, score(built, prediction) -> result, settings)."""
  needles = load_needles(cfg)
  generator, tok, info = loading.setup(recipe, ecfg, generator, lambda: oracles.niah(needles),
                                      protocol=cfg.protocol)
  counter, counted_in = haystack.counting_tokenizer(cfg.count_tokenizer, tok,
                                                    'config.niah.count_tokenizer')
  if cfg.haystack:
    docs, hay_source = haystack.read_documents(cfg.haystack, 'config.niah.haystack'), cfg.haystack
  else:
    haystack.warn_generated('config.niah.haystack')
    docs, hay_source = haystack.generated_documents(cfg.seed), 'generated'
  builder = Builder(cfg, needles, docs, counter)

  def score(b, pred):
    n = needles[b['needle']]
    return dict(score=metrics.needle_score(pred, n['keyword'], n['needle']),
                exact=metrics.exact_match(pred, n['answer']),
                context_tokens=len(counter.encode(b['context'])))

  settings = dict(counted_in=counted_in, haystack=hay_source, needles=cfg.needles or 'built-in',
                  template=cfg.template, length_buffer=cfg.length_buffer,
                  separator=cfg.separator, align_to=cfg.align_to, seed=cfg.seed)
  return generator, tok, info, builder.cell, score, settings


def _paper_job(recipe: Recipe, cfg: NiahConfig, ecfg, generator):
  builder, count_deviations = load_origin(cfg)
  builder.prepare(max(cfg.resolved('lengths')), cfg.resolved('repeats'))
  generator, tok, info = loading.setup(
      recipe, ecfg, generator, lambda: oracles.niah(builder.oracle_needles()),
      protocol=cfg.protocol)
  info = eval_settings.note_deviations(info, count_deviations, 'NIAH')

  def score(b, pred):
    return dict(score=paper_score(pred, b['reference']), context_tokens=b['context_tokens'],
                haystack_tokens=b['haystack_tokens'])

  settings = dict(counted_in=cfg.count_tokenizer, haystack=cfg.haystack, needles=cfg.needles,
                  language=cfg.language, length_buffer=cfg.length_buffer,
                  prompt='NeedleBench origin, English, guide, question last (the papers\' '
                         'origin.py)')
  return generator, tok, info, builder.cell, score, settings


def run(config, generator: model_calls.Generator | None = None) -> dict:
  """The eval_niah job; `generator` replaces the model (tests, oracles)."""
  recipe = parse(config)
  cfg = recipe.niah
  ecfg = recipe.eval
  paths = results.output_paths(recipe, ecfg, 'niah')
  job = _paper_job if cfg.paper else _lladax_job
  generator, tok, info, build, score, settings = job(recipe, cfg, ecfg, generator)
  generation = eval_settings.generation_of(info)
  scfg = eval_settings.sampler_settings(recipe.sample, generation, **eval_settings.decode_settings(
      cfg.gen_length, cfg.block_length, cfg.resolved('steps'), 'config.niah'))
  if cfg.paper:
    info = eval_settings.note_deviations(info, paper_deviations(cfg, scfg), 'NIAH')
  settings = dict(info, sampler=sampler.settings(scfg), **settings)
  store = results.ResultStore(paths['cells'], settings, ecfg.resume)

  def compute(batch):
    built = [build(c['length'], c['depth'], c['repeat']) for c in batch]
    prompts = [b['prompt'] for b in built]
    preds = generator.generate(prompts, scfg, seed=cfg.seed + batch[0]['repeat'])
    return [dict(prediction=pred, needle=b['needle'], **score(b, pred),
                 prompt_tokens=_prompt_tokens(cfg, generator, tok, generation, b['prompt']))
            for b, pred in zip(built, preds)]

  rows = results.run_cells(cells(cfg), store, compute, ecfg.batch_size, 'niah',
                          group=lambda c: c['length'])
  summary = summarise(cfg, rows)
  result = dict(job='eval_niah', **settings, grid_preset=cfg.grid_name, **summary)
  results.write_json(paths['json'], result)
  fields = ('length', 'depth', 'repeat', 'score') + (() if cfg.paper else ('exact',)) + (
      'context_tokens', 'prompt_tokens', 'prediction')
  results.write_csv(paths['csv'], [{k: r[k] for k in fields} for r in summary['cells']])
  name = '/'.join(str(info.get('checkpoint')).rstrip('/').split('/')[-2:])
  title = f'NIAH  {name}  {cfg.protocol}  overall {summary["overall"]:.1f}'
  result['png'] = results.try_plot(plots.heatmap, summary['grid']['score'], summary['lengths'],
                                  summary['depths'], paths['png'], title)
  exact = '' if cfg.paper else f'  exact {summary["overall_exact"]:.2f}'
  logging.info('NIAH (%s) overall %.2f%s; by length %s; results in %s', cfg.protocol,
               summary['overall'], exact, summary['by_length'], paths['json'])
  print(f'NIAH overall {summary["overall"]:.2f}{exact}  '
        + '  '.join(f'{l}: {v:.1f}' for l, v in summary['by_length'].items()))
  return result
