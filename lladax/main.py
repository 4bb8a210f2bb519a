"""The one entry point: `python -m lladax.main --config configs/X.py [--config.a.b=value ...]`.

Reads the recipe and runs the job that `config.job` names; nothing else happens here.
"""
import logging
import os
import sys

from absl import app
from ml_collections import config_flags

from lladax import jobs, sharding
from lladax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A recipe file from configs/.')


def _quiet_libraries():
  """Orbax logs every save step at INFO through absl; keep lladax's INFO lines only."""
  noisy = ('/orbax/', '/grain/')
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or
                      not any(n in r.pathname for n in noisy))


def _join_other_processes():
  """Multi-host jobs meet before anything touches devices. TPU VMs and SLURM are found by JAX;
  launch/gpu.sh ssh passes JAX_COORDINATOR_ADDRESS, LLADAX_NUM_PROCESSES, LLADAX_PROCESS_ID."""
  count, index = os.environ.get('LLADAX_NUM_PROCESSES'), os.environ.get('LLADAX_PROCESS_ID')
  if count and index:
    sharding.multihost_init(os.environ.get('JAX_COORDINATOR_ADDRESS'), int(count), int(index))
  else:
    sharding.multihost_init()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; settings go as --config.a.b=value')
  if _CONFIG.value is None:
    raise app.UsageError('pass a recipe: --config configs/demo.py')
  logging.getLogger().setLevel(logging.INFO)
  _quiet_libraries()
  _join_other_processes()
  try:
    jobs.run(_CONFIG.value)
  except ConfigError as e:
    print(f'lladax: {e}', file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
