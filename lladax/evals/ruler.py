"""RULER at any context length: tasks generated here (ruler_tasks.py), scored by string match.

Per task and length, `samples` prompts are generated whose token count (in the model's tokenizer,
or config.ruler.count_tokenizer) is as close to length - the task's RULER output budget as the
haystack's unit allows; the model completes the answer prefix. Scores: string_match_all (share of
references found, case-insensitive) for NIAH, VT, CWE, FWE and string_match_part (any reference)
for QA, x 100. Groups as the papers report them: NIAH (the 8 niah tasks), VT, AGG (cwe, fwe),
QA (qa_1, qa_2), and Avg over all tasks run (every task has the same number of samples, so this is
the question-weighted mean). Outputs: ruler_results.json, ruler_results.csv (task x length),
ruler.png (group scores against length) and ruler_cells.jsonl (finished samples, for resuming).
"""
from __future__ import annotations

import dataclasses
import logging

from lladax.config import ConfigError, choice, from_section
from lladax.evals import haystack, metrics, oracles, plots, runner, ruler_tasks

SCORERS = {'all': metrics.string_match_all, 'part': metrics.string_match_part}


@dataclasses.dataclass(frozen=True)
class RulerConfig:
  """`config.ruler`."""
  tasks: tuple[str, ...] = ()     # () = the 11 tasks that need no data, plus qa_1 / qa_2 when
                                  # their files are set
  lengths: tuple[int, ...] = (4096, 8192, 16384)   # LongLLaDA's; UltraLLaDA ran 4K-32K (+48K)
  samples: int = 100              # per task and length (OpenCompass' 100; RULER's own 500)
  essay: str = ''                 # glob(s) of local prose for the essay haystack (RULER uses
                                  # Paul Graham's essays); '' = generated prose
  squad: str = ''                 # SQuAD v2 dev JSON for qa_1
  hotpotqa: str = ''              # HotpotQA dev (distractor) JSON for qa_2
  words: str = ''                 # word list for cwe (RULER's english_words.json, or one word
                                  # per line); '' = built-in words topped up with made-up ones
  count_tokenizer: str = ''       # count lengths in this local tokenizer file (.tiktoken,
                                  # .model, tokenizer.json); '' = the model's tokens
  gen_length: int = 64            # tokens decoded (LongLLaDA: 64, block 64, steps 64); 0 = each
                                  # task's RULER budget (niah 128, vt 30, cwe 120, fwe 50, qa 32)
  block_length: int = 64
  steps: int = 64                 # capped at the (rounded) generation length
  seed: int = 42

  def __post_init__(self):
    for t in self.tasks:
      choice(t, tuple(ruler_tasks.TASKS), 'config.ruler.tasks')
    if 'qa_1' in self.tasks and not self.squad:
      raise ConfigError('config.ruler.tasks has qa_1 but config.ruler.squad is empty; give the '
                        'SQuAD v2 dev JSON file or drop qa_1.')
    if 'qa_2' in self.tasks and not self.hotpotqa:
      raise ConfigError('config.ruler.tasks has qa_2 but config.ruler.hotpotqa is empty; give '
                        'the HotpotQA dev JSON file or drop qa_2.')
    if not self.lengths or self.samples <= 0:
      raise ConfigError('config.ruler.lengths must be non-empty and samples positive.')

  def task_list(self) -> list[str]:
    if self.tasks:
      return list(self.tasks)
    return (list(ruler_tasks.NO_DATA_TASKS) + (['qa_1'] if self.squad else [])
            + (['qa_2'] if self.hotpotqa else []))


def resources(cfg: RulerConfig) -> tuple[ruler_tasks.Resources, dict]:
  """Essay words, keys, the cwe word pool and QA data, with where each came from."""
  if cfg.essay:
    docs, essay = haystack.read_documents(cfg.essay, 'config.ruler.essay'), cfg.essay
  else:
    if any(ruler_tasks.TASKS[t][1].get('haystack') == 'essay' for t in cfg.task_list()):
      haystack.warn_generated('config.ruler.essay')
    docs, essay = haystack.generated_documents(cfg.seed), 'generated'
  user_words = ruler_tasks.read_words(cfg.words) if cfg.words else None
  pool = ruler_tasks.word_pool(user_words, ruler_tasks.needed_pool(max(cfg.lengths)), cfg.seed)
  qa = {}
  for name, path, read in (('squad', cfg.squad, ruler_tasks.read_squad),
                           ('hotpotqa', cfg.hotpotqa, ruler_tasks.read_hotpotqa)):
    if path:
      try:
        qa[name] = read(path)
      except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f'config.ruler.{name}={path!r} could not be read as {name} ({e}); give '
                          'the official dev JSON file.') from None
  res = ruler_tasks.Resources(ruler_tasks.essay_words(docs), ruler_tasks.builtin_keys(), pool, qa)
  return res, {'essay': essay, 'words': cfg.words or 'built-in', 'squad': cfg.squad,
               'hotpotqa': cfg.hotpotqa}


class Builder:
  """Samples for cells; the haystack size found for a (task, length) starts the next search."""

  def __init__(self, cfg: RulerConfig, res: ruler_tasks.Resources, counter):
    self.cfg, self.res, self.counter = cfg, res, counter
    self.tasks = cfg.task_list()
    self._sizes: dict[tuple[str, int], int] = {}

  def budget(self, task: str, length: int) -> int:
    return length - ruler_tasks.BUDGET[ruler_tasks.TASKS[task][0]]

  def sample(self, task: str, length: int, index: int) -> tuple[ruler_tasks.Sample, int]:
    seed = [self.cfg.seed, length, self.tasks.index(task) if task in self.tasks else 0, index]

    def build(size):
      return ruler_tasks.make(task, seed, size, self.res, length, index)

    sample, n = ruler_tasks.fit(build, lambda t: len(self.counter.encode(t)),
                                self.budget(task, length), ruler_tasks.min_size(task),
                                f'RULER {task} at {length}', self._sizes.get((task, length)))
    self._sizes[(task, length)] = sample.size
    return sample, n


def summarise(tasks: list[str], lengths: list[int], rows: list[dict]) -> dict:
  scores = {t: {str(l): runner.mean(r['score'] for r in rows if r['task'] == t and r['length'] == l)
                for l in lengths} for t in tasks}
  groups = {}
  for name, members in ruler_tasks.GROUPS.items():
    present = [t for t in members if t in tasks]
    if present:
      groups[name] = {str(l): runner.mean(scores[t][str(l)] for t in present) for l in lengths}
  groups['avg'] = {str(l): runner.mean(scores[t][str(l)] for t in tasks) for l in lengths}
  return {'scores': scores, 'groups': groups,
          'overall': {g: runner.mean(v.values()) for g, v in groups.items()}}


def run(config, generator: runner.Generator | None = None) -> dict:
  """The eval_ruler job; `generator` replaces the model (tests, oracles)."""
  cfg = from_section(RulerConfig, config.get('ruler'), 'config.ruler')
  ecfg = runner.eval_config(config)
  paths = runner.output_paths(config, ecfg, 'ruler')
  res, sources = resources(cfg)
  qa_answers = {}
  for data in res.qa.values():
    qa_answers.update(data.answers_by_question())
  generator, tok, info = runner.setup(config, ecfg, generator, lambda: oracles.ruler(qa_answers))
  counter, counted_in = haystack.counting_tokenizer(cfg.count_tokenizer, tok,
                                                    'config.ruler.count_tokenizer')
  tasks, lengths = cfg.task_list(), sorted(int(l) for l in cfg.lengths)

  def decode(task):
    budget = ruler_tasks.BUDGET[ruler_tasks.TASKS[task][0]]
    return runner.sampler_settings(config, **runner.decode_settings(
        cfg.gen_length or budget, cfg.block_length, cfg.steps, 'config.ruler'))

  settings = dict(info, **sources, counted_in=counted_in, seed=cfg.seed,
                  sampler={t: dataclasses.asdict(decode(t)) for t in tasks})
  store = runner.ResultStore(paths['cells'], settings, ecfg.resume)
  builder = Builder(cfg, res, counter)
  cells = [dict(task=t, length=l, sample=i) for l in lengths for t in tasks
           for i in range(cfg.samples)]

  def compute(batch):
    task, length = batch[0]['task'], batch[0]['length']
    built = [builder.sample(task, length, c['sample']) for c in batch]
    preds = generator.generate([s.prompt for s, _ in built], decode(task),
                               seed=cfg.seed + batch[0]['sample'])
    score = SCORERS[ruler_tasks.METRIC[ruler_tasks.TASKS[task][0]]]
    out = []
    for (sample, n), pred in zip(built, preds):
      if n < 0.9 * builder.budget(task, length):
        logging.warning('RULER %s at %d: the prompt has only %d tokens (the material ran out).',
                        task, length, n)
      out.append(dict(prediction=pred, answers=sample.answers, prompt_tokens=n,
                      score=score(metrics.ruler_postprocess(pred), sample.answers)))
    return out

  try:
    runner.run_cells(cells, store, compute, ecfg.batch_size, 'ruler',
                     group=lambda c: (c['task'], c['length']))
  finally:
    store.close()
  rows = [dict(c, **store.get(c)) for c in cells]
  summary = summarise(tasks, lengths, rows)
  result = dict(job='eval_ruler', **settings, tasks=tasks, lengths=lengths, samples=cfg.samples,
                **summary, cells=rows)
  runner.write_json(paths['json'], result)
  runner.write_csv(paths['csv'], [dict(task=t, **summary['scores'][t]) for t in tasks]
                   + [dict(task=f'[{g}]', **v) for g, v in summary['groups'].items()])
  result['png'] = runner.try_plot(
      plots.lines, {g: (lengths, [v[str(l)] for l in lengths])
                    for g, v in summary['groups'].items()},
      paths['png'], 'context length (tokens)', 'score', f'RULER  {info.get("checkpoint")}')
  for g, v in summary['groups'].items():
    print(f'RULER {g:5s} ' + '  '.join(f'{l}: {s:.1f}' for l, s in v.items()))
  logging.info('RULER results in %s', paths['json'])
  return result
