"""Job name -> the function that runs it; the recipe is parsed once (config.parse: every section
it holds, config.SECTIONS), the training length checked against the mesh and the workdir made
sure of before any job runs."""
from __future__ import annotations

import importlib
import os
import tempfile

from lladax import config as config_lib
from lladax.config import ConfigError

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


def section_hints() -> dict[str, str]:
  """Section name -> what a recipe passes to presets.section to add it."""
  return {name: config_lib.section_hint(name) for name in config_lib.SECTIONS}


def check_sequence_split(recipe: config_lib.Recipe, devices=None) -> None:
  """A training length the context axis does not divide fails inside the compiled step, with a
  traceback; say so before anything is built. `devices`: the mesh's (default: all)."""
  # pylint: disable=import-outside-toplevel
  from lladax import sharding
  if recipe.job not in TRAINS_HERE or not recipe.has('mesh'):
    return
  sharding.check_sequence_split(recipe.mesh, recipe.data.seq_len, 'config.data.seq_len', devices)


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
  """Parses the recipe (every section it holds, config.SECTIONS), checks the training length
  against the mesh and the workdir, then runs the job on the parsed recipe."""
  job = config.get('job')
  if job not in JOBS:
    raise ConfigError(f'config.job={job!r} is not a job; choose one of {", ".join(sorted(JOBS))}.')
  recipe = config_lib.parse(config)
  check_sequence_split(recipe)
  if job in WRITES_WORKDIR:
    check_workdir(recipe.workdir)
  module, fn = JOBS[job].split(':')
  return getattr(importlib.import_module(module), fn)(recipe)
