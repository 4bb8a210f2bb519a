"""Job name -> the function that runs it. Modules are imported only when their job runs."""
from __future__ import annotations

import importlib

from lladax.config import ConfigError

JOBS = {
    'describe': 'lladax.describe:run',
    'train': 'lladax.train:run',
    'demo': 'lladax.demo:run',
    'generate': 'lladax.generate:run',
}


def run(config):
  job = config.get('job')
  if job not in JOBS:
    raise ConfigError(f'config.job={job!r} is not a job; choose one of {", ".join(sorted(JOBS))}.')
  module, fn = JOBS[job].split(':')
  return getattr(importlib.import_module(module), fn)(config)
