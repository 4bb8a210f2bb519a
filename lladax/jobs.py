"""Job name -> the function that runs it; every known recipe section is checked before any runs."""
from __future__ import annotations

import importlib

from lladax.config import ConfigError, from_section

JOBS = {
    'describe': 'lladax.describe:run',
    'train': 'lladax.train:run',
    'demo': 'lladax.demo:run',
    'generate': 'lladax.generate:run',
    'convert': 'lladax.convert:run',
    'export': 'lladax.export:run',
    'data_bench': 'lladax.data.bench:run',
    'plan': 'lladax.plan:run',
    'attention_bench': 'lladax.attention.bench:run',
    'eval_niah': 'lladax.evals.niah:run',
    'eval_ppl': 'lladax.evals.perplexity:run',
    'eval_ruler': 'lladax.evals.ruler:run',
    'eval_longbench': 'lladax.evals.longbench:run',
    'replay': 'lladax.replay.run:run',
}


def check_sections(config) -> None:
  """Builds every section's dataclass so a bad setting fails at start-up, whichever job runs."""
  # pylint: disable=import-outside-toplevel
  from lladax import model_config, optimizer, plan, sampler, sharding, train, train_step
  from lladax.data import simple, tokenizers
  from lladax.replay import settings as replay
  sections = {'model': model_config.ModelConfig, 'rope': model_config.RopeConfig,
              'tokenizer': tokenizers.TokenizerConfig, 'data': simple.DataConfig,
              'optim': optimizer.OptimConfig, 'train': train.TrainConfig,
              'mesh': sharding.MeshConfig, 'step': train_step.StepConfig,
              'plan': plan.PlanConfig, 'replay': replay.ReplayConfig}
  for name, cls in sections.items():
    if name in config:
      from_section(cls, config[name], f'config.{name}')
  if 'sample' in config:
    sampler.from_config(config)


def run(config):
  job = config.get('job')
  if job not in JOBS:
    raise ConfigError(f'config.job={job!r} is not a job; choose one of {", ".join(sorted(JOBS))}.')
  check_sections(config)
  module, fn = JOBS[job].split(':')
  return getattr(importlib.import_module(module), fn)(config)
