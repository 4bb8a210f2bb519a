"""RULER at any context length, under three protocols (config.ruler.protocol).

- 'longllada' (default) and 'ultrallada': the papers' RULER, as OpenCompass 0.4.2 builds it
  (ruler_opencompass.py, draw for draw): lengths counted in cl100k_base (a local
  cl100k_base.tiktoken file, config.ruler.count_tokenizer), NIAH haystacks from
  PaulGrahamEssays.jsonl (config.ruler.essay), words from the wonderwords package, 100 samples per
  task and length, the evaluators' scores rounded to 2 decimals. LongLLaDA ran 4K, 8K and 16K
  with the answer (BOT) turn commented out of the prompt template (the prompt is the dataset's
  prompt as is); UltraLLaDA ran 4K-32K (48K in its appendix) with OpenCompass' template as
  shipped, whose answer turn ends the prompt with '\\n\\n'. Both decode 64 tokens (the model's
  max_out_len; RULER's inferencer sets none), block 64, 64 steps.
- 'lladax': this project's own reading of RULER (ruler_tasks.py): lengths in the model's tokens
  (or count_tokenizer), numpy draws, built-in words topped up with made-up ones, a haystack size
  found by bisection per sample, RULER's postprocessing before matching. Not the papers' numbers.

Scores per task and length; groups as the papers report them: NIAH (the 8 niah tasks), VT, AGG
(cwe, fwe), QA (qa_1 = SQuAD, qa_2 = HotpotQA), each the mean of its tasks, and the average over
all 13 tasks ('avg': OpenCompass' ruler_<len> summary group, the papers' Avg, which weighs each
group by its number of tasks). QA needs its data files; a run without them says so, and its
average is named for the tasks it ran ('avg_11_tasks'), never 'avg'. Outputs:
ruler_results.json, ruler_results.csv (task x length), ruler.png (group scores against length)
and ruler_cells.jsonl (finished samples, for resuming).
"""
from __future__ import annotations

import dataclasses
import logging

from lladax import sampler
from lladax.config import ConfigError, Recipe, choice, parse
from lladax.evals import (eval_settings, haystack, loading, metrics, model_calls, oracles, plots,
                          protocols, results, ruler_opencompass as oc, ruler_tasks)

SCORERS = {'all': metrics.string_match_all, 'part': metrics.string_match_part}
# Context lengths of each protocol's grid (OpenCompass' ruler_<k>k_gen.py: 1024 * k tokens).
LENGTHS = {'longllada': (4096, 8192, 16384), 'ultrallada': (4096, 8192, 16384, 32768),
           'lladax': (4096, 8192, 16384)}
APPENDIX_LENGTHS = {'ultrallada': (49152,)}
ANSWER_TURNS = ('absent', 'present')
ANSWER_TURN = {'longllada': 'absent', 'ultrallada': 'present'}
# What the prompt template's answer turn adds: OpenCompass flattens HUMAN '{prompt}' then BOT
# '{answer}\n' (the answer replaced by '') into prompt + '\n' + '\n'.
TURN_SUFFIX = {'absent': '', 'present': '\n\n'}
# The name the papers' configs give the length tokenizer (one encoding, cl100k_base).
TOKENIZER_MODEL = {'longllada': 'gpt-4', 'ultrallada': 'cl100k_base'}
PAPER_SAMPLES, PAPER_SEED, PAPER_DECODE = 100, 42, (64, 64, 64)


@dataclasses.dataclass(frozen=True)
class RulerConfig:
  """`config.ruler`."""
  protocol: str = 'longllada'     # longllada | ultrallada (the papers' RULER, as OpenCompass
                                  # 0.4.2 builds it) | lladax (this project's own reading)
  tasks: tuple[str, ...] = ()     # () = all 13; qa_1 / qa_2 only when their files are set (a run
                                  # without them names its average for the tasks it ran)
  lengths: tuple[int, ...] = ()   # () = the protocol's: LongLLaDA 4K/8K/16K, UltraLLaDA 4K-32K
                                  # (its appendix adds 49152), lladax 4K/8K/16K
  samples: int = 100              # per task and length (OpenCompass' 100; RULER's own 500)
  essay: str = ''                 # papers: PaulGrahamEssays.jsonl (JSON lines with "text");
                                  # lladax: glob(s) of local prose, '' = generated prose
  squad: str = ''                 # SQuAD v2 dev JSON for qa_1
  hotpotqa: str = ''              # HotpotQA dev (distractor) JSON for qa_2
  words: str = ''                 # lladax only: word list for cwe ('' = built-in words topped up
                                  # with made-up ones); the papers' come from wonderwords
  count_tokenizer: str = ''       # count lengths in this local tokenizer file. Papers: required,
                                  # cl100k_base.tiktoken; lladax: .tiktoken, .model or
                                  # tokenizer.json, '' = the model's tokens
  answer_turn: str = ''           # papers: '' = the protocol's (longllada absent, ultrallada
                                  # present: the prompt ends '\n\n'); absent | present
  gen_length: int = 64            # tokens decoded (both papers: 64, block 64, steps 64); 0 = each
                                  # task's output budget (papers: niah 128, vt 30, cwe 120,
                                  # fwe 50, qa 50; lladax: RULER's, qa 32)
  block_length: int = 64
  steps: int = 64                 # capped at the (rounded) generation length
  seed: int = 42                  # the datasets' random_seed (OpenCompass: 42)

  def __post_init__(self):
    protocols.check(self.protocol, 'config.ruler.protocol')
    for t in self.tasks:
      choice(t, tuple(ruler_tasks.TASKS), 'config.ruler.tasks')
    if 'qa_1' in self.tasks and not self.squad:
      raise ConfigError('config.ruler.tasks has qa_1 but config.ruler.squad is empty; give the '
                        'SQuAD v2 dev JSON file or drop qa_1.')
    if 'qa_2' in self.tasks and not self.hotpotqa:
      raise ConfigError('config.ruler.tasks has qa_2 but config.ruler.hotpotqa is empty; give '
                        'the HotpotQA dev JSON file or drop qa_2.')
    if self.samples <= 0 or any(int(l) <= 0 for l in self.lengths):
      raise ConfigError('config.ruler.lengths must be positive and samples positive.')
    if self.answer_turn:
      choice(self.answer_turn, ANSWER_TURNS, 'config.ruler.answer_turn')
    if self.protocol != 'lladax' and self.words:
      raise ConfigError(f'config.ruler.words is for protocol lladax; protocol {self.protocol} '
                        'draws its words from the wonderwords package, so leave it "".')

  def grid(self) -> list[int]:
    return sorted(int(l) for l in (self.lengths or LENGTHS[self.protocol]))

  def not_run(self) -> dict[str, str]:
    """The QA tasks left out of the default task list, with the reason."""
    if self.tasks:
      return {}
    return {t: f'config.ruler.{name} is empty' for t, name in (('qa_1', 'squad'),
                                                               ('qa_2', 'hotpotqa'))
            if not getattr(self, name)}

  def task_list(self) -> list[str]:
    if self.tasks:
      return list(self.tasks)
    return [t for t in ruler_tasks.TASKS if t not in self.not_run()]


def inputs(cfg: RulerConfig, task: str, pool_size: int = 0) -> dict[str, str | int]:
  """The files a task's samples are drawn from (and, under lladax, the size of the cwe word pool,
  which the longest length sets). Kept in the task's cell keys rather than the results' header, so
  a run extended by tasks or lengths keeps its finished cells and recomputes only those whose
  material changed."""
  if cfg.protocol != 'lladax':
    if task in oc.ESSAY_TASKS:
      return {'essay': cfg.essay}
    data = oc.DATA_TASKS.get(task)
    return {data: getattr(cfg, data)} if data else {}
  kind, spec = ruler_tasks.TASKS[task]
  if spec.get('haystack') == 'essay':
    return {'essay': cfg.essay or 'generated'}
  if kind == 'cwe':
    return {'words': cfg.words or 'built-in', 'pool': pool_size}
  if kind == 'qa':
    data = spec['dataset']
    return {data: getattr(cfg, data)}
  return {}


def files(cfg: RulerConfig) -> dict[str, str]:
  """The files the run read, for its results (each cell's key names those it drew from)."""
  out = {'essay': cfg.essay, 'squad': cfg.squad, 'hotpotqa': cfg.hotpotqa}
  if cfg.protocol == 'lladax':
    out.update(essay=cfg.essay or 'generated', words=cfg.words or 'built-in')
  return out


def cells_of(cfg: RulerConfig, tasks: list[str], lengths: list[int], pool_size: int = 0):
  return [dict(task=t, length=l, sample=i, **inputs(cfg, t, pool_size)) for l in lengths
          for t in tasks for i in range(cfg.samples)]


# ---------------------------------------------------------------------------------------------
# protocol lladax


def resources(cfg: RulerConfig) -> ruler_tasks.Resources:
  """Essay words, keys, the cwe word pool and QA data."""
  if cfg.essay:
    docs = haystack.read_documents(cfg.essay, 'config.ruler.essay')
  else:
    if any(ruler_tasks.TASKS[t][1].get('haystack') == 'essay' for t in cfg.task_list()):
      haystack.warn_generated('config.ruler.essay')
    docs = haystack.generated_documents(cfg.seed)
  user_words = ruler_tasks.read_words(cfg.words) if cfg.words else None
  pool = ruler_tasks.word_pool(user_words, ruler_tasks.needed_pool(max(cfg.grid())), cfg.seed)
  qa = {}
  for name, path, read in (('squad', cfg.squad, ruler_tasks.read_squad),
                           ('hotpotqa', cfg.hotpotqa, ruler_tasks.read_hotpotqa)):
    if path:
      try:
        qa[name] = read(path)
      except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f'config.ruler.{name}={path!r} could not be read as {name} ({e}); give '
                          'the official dev JSON file.') from None
  return ruler_tasks.Resources(ruler_tasks.essay_words(docs), ruler_tasks.builtin_keys(), pool, qa)


class Builder:
  """Samples for cells; the haystack size found for a (task, length) starts the next search."""

  def __init__(self, cfg: RulerConfig, res: ruler_tasks.Resources, counter):
    self.cfg, self.res, self.counter = cfg, res, counter
    self._sizes: dict[tuple[str, int], int] = {}

  def budget(self, task: str, length: int) -> int:
    return length - ruler_tasks.BUDGET[ruler_tasks.TASKS[task][0]]

  def sample(self, task: str, length: int, index: int) -> tuple[ruler_tasks.Sample, int]:
    # The task's place among all 13, not among those chosen: a run of a few tasks draws the
    # samples a full run draws.
    seed = [self.cfg.seed, length, list(ruler_tasks.TASKS).index(task), index]

    def build(size):
      return ruler_tasks.make(task, seed, size, self.res, length, index)

    sample, n = ruler_tasks.fit(build, lambda t: len(self.counter.encode(t)),
                                self.budget(task, length), ruler_tasks.min_size(task),
                                f'RULER {task} at {length}', self._sizes.get((task, length)))
    self._sizes[(task, length)] = sample.size
    return sample, n


def summarise(tasks: list[str], lengths: list[int], rows: list[dict]) -> dict:
  scores = {t: {str(l): results.mean(r['score'] for r in rows if r['task'] == t and r['length'] == l)
                for l in lengths} for t in tasks}
  groups = {}
  for name, members in ruler_tasks.GROUPS.items():
    present = [t for t in members if t in tasks]
    if present:
      groups[name] = {str(l): results.mean(scores[t][str(l)] for t in present) for l in lengths}
  groups[oc.average_name(tasks)] = {str(l): results.mean(scores[t][str(l)] for t in tasks)
                                 for l in lengths}
  return {'scores': scores, 'groups': groups,
          'overall': {g: results.mean(v.values()) for g, v in groups.items()}}


def run_lladax(recipe: Recipe, cfg: RulerConfig, generator: model_calls.Generator | None) -> dict:
  ecfg = recipe.eval
  paths = results.output_paths(recipe, ecfg, 'ruler')
  res = resources(cfg)
  qa_answers = {}
  for data in res.qa.values():
    qa_answers.update(data.answers_by_question())
  generator, tok, info = loading.setup(recipe, ecfg, generator, lambda: oracles.ruler(qa_answers),
                                      protocol='lladax')
  generation = eval_settings.generation_of(info)
  counter, counted_in = haystack.counting_tokenizer(cfg.count_tokenizer, tok,
                                                    'config.ruler.count_tokenizer')
  tasks, lengths = cfg.task_list(), cfg.grid()

  def decode(task):
    budget = ruler_tasks.BUDGET[ruler_tasks.TASKS[task][0]]
    return eval_settings.sampler_settings(recipe.sample, generation, **eval_settings.decode_settings(
        cfg.gen_length or budget, cfg.block_length, cfg.steps, 'config.ruler'))

  settings = dict(info, counted_in=counted_in, seed=cfg.seed,
                  sampler={t: sampler.settings(decode(t)) for t in ruler_tasks.TASKS})
  store = results.ResultStore(paths['cells'], settings, ecfg.resume)
  builder = Builder(cfg, res, counter)
  cells = cells_of(cfg, tasks, lengths, len(res.pool))

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

  rows = results.run_cells(cells, store, compute, ecfg.batch_size, 'ruler',
                          group=lambda c: (c['task'], c['length']))
  summary = summarise(tasks, lengths, rows)
  return finish(paths, dict(job='eval_ruler', **settings, files=files(cfg), tasks=tasks,
                            lengths=lengths, samples=cfg.samples, not_run=cfg.not_run(), **summary,
                            cells=rows), info)


# ---------------------------------------------------------------------------------------------
# protocols longllada / ultrallada


def material(cfg: RulerConfig, tasks: list[str]) -> oc.Material:
  essay = None
  if any(t in oc.ESSAY_TASKS for t in tasks):
    if not cfg.essay:
      raise ConfigError(f'config.ruler.essay is empty; protocol {cfg.protocol} hides the needles '
                        'of niah_single_2/3, multikey_1, multivalue and multiquery in Paul '
                        'Graham\'s essays: give PaulGrahamEssays.jsonl or leave those tasks out.')
    essay = oc.read_essay(cfg.essay)
  qa = {}
  for task, name in oc.DATA_TASKS.items():
    if task in tasks:
      qa[name] = oc.read_qa(name, getattr(cfg, name))
      if len(qa[name].qas) < cfg.samples:
        raise ConfigError(f'config.ruler.{name}={getattr(cfg, name)!r} has {len(qa[name].qas)} '
                          f'usable questions, fewer than config.ruler.samples={cfg.samples}; '
                          'lower the samples or give the full dev file.')
  return oc.Material(oc.wonderwords_lists(), essay, qa)


def paper_prompt(text: str, suffix: str) -> str:
  """What OpenCompass hands the model: the dataset's prompt, then the answer turn's suffix, with
  the template's '{answer}' filled by ''. Its safe_format fills 'prompt' before 'answer', each
  through the whole text, so a '{answer}' quoted inside an essay or paragraph goes too, while a
  quoted '{prompt}' or '{query}' stays."""
  return (text + suffix).replace('{answer}', '')


def paper_deviations(cfg: RulerConfig, lengths, words_version: str, turn: str,
                     scfg) -> list[str]:
  """The settings of this run that differ from what the protocol's paper ran (the sampler
  `scfg`'s decode lengths are the job's and checked as config.ruler's)."""
  p, out = cfg.protocol, []
  grid = LENGTHS[p] + APPENDIX_LENGTHS.get(p, ())
  if any(l not in grid for l in lengths):
    out.append(f'lengths={tuple(lengths)} (protocol {p}: {LENGTHS[p]})')
  if cfg.samples != PAPER_SAMPLES:
    out.append(f'samples={cfg.samples} (protocol {p}: {PAPER_SAMPLES})')
  if cfg.seed != PAPER_SEED:
    out.append(f'seed={cfg.seed} (protocol {p}: {PAPER_SEED})')
  if (cfg.gen_length, cfg.block_length, cfg.steps) != PAPER_DECODE:
    out.append(f'gen_length, block_length, steps={cfg.gen_length}, {cfg.block_length}, '
               f'{cfg.steps} (protocol {p}: 64, 64, 64)')
  if turn != ANSWER_TURN[p]:
    out.append(f'answer_turn={turn} (protocol {p}: {ANSWER_TURN[p]})')
  if words_version != oc.WONDERWORDS_VERSION:
    out.append(f'wonderwords {words_version} (protocol {p}: {oc.WONDERWORDS_VERSION}, whose noun '
               'list the papers drew from)')
  return out + protocols.sampler_deviations(scfg, p)


def draw(cfg: RulerConfig, task: str, length: int, n: int, counter: oc.Counter,
         mat: oc.Material) -> list[tuple[str, list[str]]]:
  samples = oc.samples(task, length, n, cfg.seed, counter, mat)
  if not all(answers for _, answers in samples):
    # OpenCompass makes such samples (e.g. cwe when not even 10 words fit) and then fails
    # dividing by their zero answers when scoring.
    raise ConfigError(f'RULER {task} at {length}: the length leaves room for no answer in a '
                      'sample, which OpenCompass cannot score; use a longer length.')
  return samples


class PaperSamples:
  """The samples of the (task, length) being run, drawn whole (each depends on those before)."""

  def __init__(self, cfg: RulerConfig, counter: oc.Counter, mat: oc.Material):
    self.cfg, self.counter, self.mat = cfg, counter, mat
    self._key, self._samples = None, []

  def get(self, task: str, length: int) -> list[tuple[str, list[str]]]:
    if self._key != (task, length):
      self._samples = []  # one (task, length) in memory at a time
      self._samples = draw(self.cfg, task, length, self.cfg.samples, self.counter, self.mat)
      self._key = (task, length)
    return self._samples


def run_paper(recipe: Recipe, cfg: RulerConfig, generator: model_calls.Generator | None) -> dict:
  ecfg = recipe.eval
  paths = results.output_paths(recipe, ecfg, 'ruler')
  tasks, lengths, not_run = cfg.task_list(), cfg.grid(), cfg.not_run()
  encoder, count_deviations = haystack.cl100k(cfg.count_tokenizer, 'config.ruler.count_tokenizer')
  counter = oc.Counter(encoder.encode_refusing_special)
  mat = material(cfg, tasks)
  for task in tasks:
    # A first sample of each task before the model loads: a length too short for it or material
    # it cannot use fails now, not hours into the run.
    draw(cfg, task, lengths[0], 1, counter, mat)
  qa_prompts: dict[str, list[str]] = {}
  generator, _, info = loading.setup(recipe, ecfg, generator,
                                    lambda: oracles.Oracle(oc.solver(qa_prompts)),
                                    protocol=cfg.protocol)
  generation = eval_settings.generation_of(info)
  turn = cfg.answer_turn or ANSWER_TURN[cfg.protocol]

  def decode(task):
    gen = cfg.gen_length or oc.TOKENS_TO_GENERATE[oc.TASKS[task][0]]
    return eval_settings.sampler_settings(recipe.sample, generation, **eval_settings.decode_settings(
        gen, cfg.block_length, cfg.steps, 'config.ruler'))

  info = eval_settings.note_deviations(info, count_deviations + paper_deviations(
      cfg, lengths, mat.words.version, turn, decode(tasks[0])), 'RULER')
  # Whatever the run's selection: a run extended by tasks keeps the same header.
  settings = dict(info, count_tokenizer=cfg.count_tokenizer,
                  tokenizer_model=TOKENIZER_MODEL[cfg.protocol], wonderwords=mat.words.version,
                  answer_turn=turn, seed=cfg.seed,
                  abbr={t: spec['abbr'] for t, (_, spec) in oc.TASKS.items()},
                  sampler={t: sampler.settings(decode(t)) for t in oc.TASKS})
  store = results.ResultStore(paths['cells'], settings, ecfg.resume)
  drawn = PaperSamples(cfg, counter, mat)

  def compute(batch):
    task, length = batch[0]['task'], batch[0]['length']
    chosen = [drawn.get(task, length)[c['sample']] for c in batch]
    prompts = [paper_prompt(text, TURN_SUFFIX[turn]) for text, _ in chosen]
    if oc.TASKS[task][0] == 'qa' and ecfg.oracle:
      qa_prompts.update({p: answers for p, (_, answers) in zip(prompts, chosen)})
    preds = generator.generate(prompts, decode(task), seed=cfg.seed + batch[0]['sample'])
    out = []
    for (text, answers), pred in zip(chosen, preds):
      m = oc.match(task, pred, answers)
      out.append(dict(prediction=pred, answers=answers, prompt_tokens=counter(text), match=m,
                      score=100 * m))
    return out

  rows = results.run_cells(cells_of(cfg, tasks, lengths), store, compute, ecfg.batch_size,
                          'ruler', group=lambda c: (c['task'], c['length']))
  scores = {t: {str(l): oc.task_score([r['match'] for r in rows
                                       if r['task'] == t and r['length'] == l])
                for l in lengths} for t in tasks}
  groups = oc.summarise(scores, lengths)
  summary = {'scores': scores, 'groups': groups,
             'overall': {g: results.mean(v.values()) for g, v in groups.items()}}
  return finish(paths, dict(job='eval_ruler', **settings, files=files(cfg), tasks=tasks,
                            lengths=lengths, samples=cfg.samples, not_run=not_run, **summary,
                            cells=rows), info)


# ---------------------------------------------------------------------------------------------


def finish(paths: dict, result: dict, info: dict) -> dict:
  """Writes the JSON, the CSV (task x length, then the groups) and the picture; prints groups."""
  lengths, groups, scores = result['lengths'], result['groups'], result['scores']
  results.write_json(paths['json'], result)
  results.write_csv(paths['csv'], [dict(task=t, **scores[t]) for t in result['tasks']]
                   + [dict(task=f'[{g}]', **v) for g, v in groups.items()])
  result['png'] = results.try_plot(
      plots.lines, {g: (lengths, [v[str(l)] for l in lengths]) for g, v in groups.items()},
      paths['png'], 'context length (tokens)', 'score', f'RULER  {info.get("checkpoint")}')
  for g, v in groups.items():
    print(f'RULER {g:5s} ' + '  '.join(f'{l}: {s:.2f}' for l, s in v.items()))
  if result['not_run']:
    reasons = '; '.join(f'{t} ({why})' for t, why in result['not_run'].items())
    print(f'RULER not run: {reasons}; the average is over {len(result["tasks"])} of '
          f'{len(ruler_tasks.TASKS)} tasks, not the papers\' Avg.')
    logging.warning('RULER not run: %s', reasons)
  logging.info('RULER results in %s', paths['json'])
  return result


def run(config, generator: model_calls.Generator | None = None) -> dict:
  """The eval_ruler job; `generator` replaces the model (tests, oracles)."""
  recipe = parse(config)
  cfg = recipe.ruler
  if cfg.protocol == 'lladax':
    return run_lladax(recipe, cfg, generator)
  return run_paper(recipe, cfg, generator)
