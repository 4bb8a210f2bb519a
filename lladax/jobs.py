"""Job name -> the function that runs it; every known recipe section, the training length
against the mesh and the workdir are checked before any runs."""
from __future__ import annotations

import importlib
import os
import tempfile

from lladax.config import ConfigError, from_section

JOBS = {
    'describe': 'lladax.describe:run',
    'train': 'lladax.train.job:run',
    'demo': 'lladax.demo:run',
    'generate': 'lladax.generate:run',
    'convert': 'lladax.hf.convert:run',
    'export': 'lladax.hf.export:run',
    'data_bench': 'lladax.data.bench:run',
    'plan': 'lladax.plan:run',
    'attention_bench': 'lladax.attention.bench:run',
    'eval_niah': 'lladax.evals.niah:run',
    'eval_ppl': 'lladax.evals.perplexity:run',
    'eval_ruler': 'lladax.evals.ruler:run',
    'eval_longbench': 'lladax.evals.longbench:run',
    'replay': 'lladax.replay.run:run',
}


# Jobs that write under config.workdir (the others only read, or write config.*.output).
WRITES_WORKDIR = ('train', 'demo', 'data_bench', 'plan', 'attention_bench', 'eval_niah',
                  'eval_ppl', 'eval_ruler', 'eval_longbench', 'replay')
# Jobs that train on this host's devices with config.mesh and config.data.seq_len.
TRAINS_HERE = ('train', 'demo')


def sections() -> dict:
  """Recipe section name -> the dataclass that reads it."""
  # pylint: disable=import-outside-toplevel
  from lladax import model_config, plan, sharding
  from lladax.train import optimizer
  from lladax.train import job as train
  from lladax.train import step as train_step
  from lladax.data import config as data_config, tokenizers
  from lladax.replay import settings as replay
  return {'model': model_config.ModelConfig, 'rope': model_config.RopeConfig,
          'tokenizer': tokenizers.TokenizerConfig, 'data': data_config.DataConfig,
          'optim': optimizer.OptimConfig, 'train': train.TrainConfig,
          'mesh': sharding.MeshConfig, 'step': train_step.StepConfig,
          'plan': plan.PlanConfig, 'replay': replay.ReplayConfig}


def section_hints() -> dict[str, str]:
  """Section name -> what a recipe passes to presets.section to add it ('sharding.MeshConfig')."""
  return {name: f'{cls.__module__.rsplit(".", 1)[-1]}.{cls.__name__}'
          for name, cls in sections().items()}


def check_sections(config) -> None:
  """Builds every section's dataclass so a bad setting fails at start-up, whichever job runs."""
  from lladax import sampler  # pylint: disable=import-outside-toplevel
  for name, cls in sections().items():
    if name in config:
      from_section(cls, config[name], f'config.{name}')
  if 'sample' in config:
    sampler.from_config(config)


def check_sequence_split(config, devices=None) -> None:
  """A training length the context axis does not divide fails inside the compiled step, with a
  traceback; say so before anything is built. `devices`: the mesh's (default: all)."""
  # pylint: disable=import-outside-toplevel
  from lladax import sharding
  from lladax.data import config as data_config
  if config.get('job') not in TRAINS_HERE or 'mesh' not in config:
    return
  seq_len = from_section(data_config.DataConfig, config.data, 'config.data').seq_len
  sharding.check_sequence_split(sharding.from_config(config), seq_len, 'config.data.seq_len',
                                devices)


def check_workdir(path: str) -> None:
  """ConfigError unless `path` is, or can be made, a folder this process can write to; found
  now, not when the first metrics line or checkpoint is written minutes later."""
  if not path or '://' in path:   # cloud storage is checked by the job that opens it
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'config.workdir={path} is a file, not a folder; pass a folder to write '
                      'to (new or existing).')
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'config.workdir={path} cannot be created because {existing} is a file; '
                      'pass a folder path whose parents are folders.')
  try:
    # Anonymous where the platform allows; nothing is left behind in the user's folder.
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ConfigError(f'config.workdir={path} is not writable ({e.strerror} in {existing}); '
                      'pass a folder you can write to, or free space there.') from None


def run(config):
  job = config.get('job')
  if job not in JOBS:
    raise ConfigError(f'config.job={job!r} is not a job; choose one of {", ".join(sorted(JOBS))}.')
  check_sections(config)
  check_sequence_split(config)
  if job in WRITES_WORKDIR:
    check_workdir(config.get('workdir') or '')
  module, fn = JOBS[job].split(':')
  return getattr(importlib.import_module(module), fn)(config)
