"""The replay job: UltraLLaDA's and LongLLaDA's experiments in miniature, end to end.

  data -> pretrain at T -> (retrieval SFT, short records then up to T) -> probe the base at T
    -> evaluate training-free RoPE rules
    -> post-train at post_multiple*T per packing strategy and seed -> evaluate them
    -> results table, heatmaps and perplexity plot

Every stage is an ordinary lladax job run on a config from lladax/replay/stages.py, in a folder
of its own under the workdir. A rerun of the same recipe skips finished stages (a model folder
exists; evaluation cells are resumed), so a killed replay continues where it stopped; a stage
folder made by different settings is refused rather than reused.
"""
from __future__ import annotations

import json
import logging
import os
import time

from lladax import jobs, saved_model
from lladax.config import ConfigError, parse, refuse_other_settings
from lladax.data import tokenizers
from lladax.evals import haystack, niah, results
from lladax.replay import corpus, probe, report, stages
from lladax.replay.settings import ReplayConfig


def _stage_settings(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _run_stage(config) -> tuple[dict, float]:
  """Runs one stage's job unless its folder holds the same stage finished.

  Returns (result, seconds): the job's result (for a finished train stage, what was recorded)
  and the wall time the stage has taken over all invocations (evaluations resume cell by cell).
  """
  os.makedirs(config.workdir, exist_ok=True)
  path = os.path.join(config.workdir, f'replay_{config.job}.json')
  settings = _stage_settings(config)
  recorded = {'settings': settings, 'done': False, 'seconds': 0.0}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      recorded = json.load(f)
    refuse_other_settings(recorded['settings'], settings, config.workdir,
                          'delete that folder or use another workdir.', prefix='config.')
    if recorded['done'] and config.job == 'train':
      logging.info('replay: %s is done; skipping it', config.workdir)
      return recorded['result'], recorded['seconds']
  results.write_json(path, recorded)
  start = time.perf_counter()
  result = jobs.run(config)
  if not recorded['done']:   # a finished evaluation only re-reads its cells: no time to count
    recorded['seconds'] += time.perf_counter() - start
  if config.job == 'train' and result['stopped_early']:
    # The train job stops on SIGTERM (a kill, or a preemption) with a checkpoint to resume from
    # and no model: the stage is not done, and no later stage may start from it.
    results.write_json(path, recorded)
    logging.warning('replay: %s stopped before its last step; rerun the same command to resume '
                    'it', config.workdir)
    raise SystemExit(143)
  recorded['done'] = True
  if config.job == 'train':
    result = {'model_dir': result['model_dir'], 'history': result['history']}
    recorded['result'] = result
  results.write_json(path, recorded)
  return result, recorded['seconds']


def _probe(rcfg: ReplayConfig, files: dict, tokenizer, model_dir: str, seed: int) -> dict:
  """The base model's teacher-forced probes at T, on the evaluation's own 1T prompts (its NIAH
  settings, so the same haystacks and needles) and held-out prose."""
  model, _ = saved_model.load_model(model_dir, dtype='float32', param_dtype='float32')
  settings = stages.niah_grid(rcfg, files)
  docs = haystack.read_documents(settings.haystack, 'the replay probe')
  builder = niah.Builder(settings, niah.load_needles(settings), docs, tokenizer)
  return probe.run(model, tokenizer, model.cfg.mask_token_id, model.cfg.bos_token_id, builder,
                   docs, length=rcfg.train_length, depths=settings.resolved('depths'),
                   repeats=settings.resolved('repeats'), seed=seed)


def run(config) -> dict:
  """The replay job: data, pre-training, instruct stages, post-training and evaluation, each a
  job of its own run on a recipe made from this one."""
  recipe = parse(config)
  config = recipe.raw   # the ConfigDict each stage's recipe is copied from
  rcfg = recipe.replay
  if not recipe.workdir:
    raise ConfigError('config.workdir is empty; the replay writes its data, models and results '
                      'there: pass --config.workdir=DIR.')
  if not recipe.has('pipeline'):
    raise ConfigError('the replay recipe needs a config.pipeline section (its packing and fit '
                      'for pre-training); start from configs/mini/ultra.py.')
  workdir = os.path.abspath(config.workdir)
  tok = tokenizers.load(recipe.tokenizer)
  start = time.perf_counter()
  files = corpus.build(rcfg, tok, os.path.join(workdir, 'data'), config.seed)
  seconds = {'data': time.perf_counter() - start}
  pre, seconds['pretrain'] = _run_stage(stages.pretrain(config, rcfg, files, workdir))
  base, instructed = pre, {}
  for name, long, steps in (('instruct', False, rcfg.instruct_steps),
                            ('instruct_long', True, rcfg.instruct_long_steps)):
    if steps:
      base, seconds[name] = _run_stage(stages.instruct(config, rcfg, files, workdir,
                                                       base['model_dir'], long))
      instructed[name] = base
  probes = _probe(rcfg, files, tok, base['model_dir'], config.seed)
  logging.info('replay: base model probes at T: %s', probes)
  posttrained, post_results = {}, {}
  for seed in rcfg.seeds:
    for strategy in rcfg.strategies:
      name = stages.post_name(strategy, seed)
      post_results[name], seconds[name] = _run_stage(stages.posttrain(
          config, rcfg, files, workdir, base['model_dir'], strategy, seed))
      posttrained[(strategy, seed)] = post_results[name]['model_dir']
  evaluated = {}
  for variant in stages.variants(rcfg, base['model_dir'], posttrained):
    niah, seconds[f'eval_niah/{variant.name}'] = _run_stage(
        stages.niah_eval(config, rcfg, files, workdir, variant))
    ppl, seconds[f'eval_ppl/{variant.name}'] = _run_stage(
        stages.ppl_eval(config, rcfg, files, workdir, variant))
    evaluated[variant.name] = (variant, niah, ppl)
  logging.info('replay: this invocation took %.0f s', time.perf_counter() - start)
  out_dir = rcfg.report_dir or os.path.join(workdir, 'report')
  summary = report.write(out_dir, rcfg, evaluated, pre, instructed, post_results, seconds,
                         probes)
  print(report.markdown_table(summary))
  return summary
