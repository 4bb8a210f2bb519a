"""The one entry point: `python -m lladax.main --config configs/X.py [--config.a.b=value ...]`.

Reads the recipe and runs the job that `config.job` names. A mistake the user can fix (a setting
the recipe lacks, a ConfigError, a full disk) ends as one `lladax: ...` line and exit code 2.
"""
import errno
import logging
import os
import re
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from lladax import jobs, multihost, sharding
from lladax.config import ConfigError, check_override
from lladax.train import checkpoints as train_checkpoint

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A recipe file from configs/.')


def _quiet_libraries():
  """Orbax logs every save step at INFO through absl; keep lladax's INFO lines only."""
  noisy = ('/orbax/', '/grain/')
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or
                      not any(n in r.pathname for n in noisy))


def _skip_absent_tpu():
  """With JAX_PLATFORMS unset jax tries every backend, TPU too: where libtpu is installed (CI
  installs it for ahead-of-time TPU compiles) on a host without a TPU chip, libtpu prints INTERNAL
  errors while it looks for one. A host with no TPU chip and no GPU ends on the CPU anyway, so ask
  for it at once; a platform the user chose, or any accelerator, leaves jax's choice alone."""
  if jax.config.jax_platforms or 'JAX_FORCE_TPU_INIT' in os.environ:
    return
  try:  # the checks jax itself uses to find TPU chips (PCI ids) and GPUs (device files)
    from jax._src import hardware_utils as found  # pylint: disable=import-outside-toplevel
    accelerator = (found.num_available_tpu_chips_and_device_id()[0] or
                   found.has_visible_nvidia_gpu() or found.num_available_amd_gpus(stop_at=1))
  except (ImportError, AttributeError):  # a jax that moved them: its own choice, noise and all
    return
  if accelerator:
    return
  jax.config.update('jax_platforms', 'cpu')


def _join_other_processes():
  """Multi-host jobs meet before anything touches devices. TPU VMs and SLURM are found by JAX;
  launch/gpu.sh ssh passes JAX_COORDINATOR_ADDRESS, LLADAX_NUM_PROCESSES, LLADAX_PROCESS_ID."""
  count, index = os.environ.get('LLADAX_NUM_PROCESSES'), os.environ.get('LLADAX_PROCESS_ID')
  if count and index:
    sharding.multihost_init(os.environ.get('JAX_COORDINATOR_ADDRESS'), int(count), int(index))
  else:
    sharding.multihost_init()


def _fail(message: str):
  print(f'lladax: {message}', file=sys.stderr)
  sys.exit(2)


def _recipe(argv) -> str | None:
  """The value of --config FILE[:ARG] / --config=FILE[:ARG] in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv) -> list[str]:
  """The dotted paths of --config.a.b=value (and --[no]config.a.b) in argv, in order."""
  paths = []
  for arg in argv:
    match = re.match(r'^--?(?:no)?config\.([^=]+)', arg)
    if match:
      paths.append(match.group(1))
  return paths


def _check_overrides(argv) -> None:
  """ConfigError naming the first --config.a.b that the recipe lacks (ml_collections raises a
  KeyError with a traceback for it while absl parses the flags)."""
  recipe = _recipe(argv)
  config = flags.FLAGS['config'].parser.parse(recipe)   # the recipe as the flag loads it
  for path in _overrides(argv):
    check_override(config, path, recipe.split(':', 1)[0], jobs.section_hints())


def parse_flags(argv):
  """absl's flag parsing with the user's mistakes as one lladax line: a missing recipe file, a
  setting the recipe lacks, a value of the wrong type."""
  recipe = (_recipe(argv) or '').split(':', 1)[0]
  if recipe and not os.path.isfile(recipe):
    _fail(f'the recipe {recipe} does not exist; pass a recipe file, e.g. --config configs/demo.py.')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}; settings go as --config.section.key=value, with a value of its type.')
  except (KeyError, AttributeError):
    try:
      _check_overrides(argv)
    except ConfigError as e:
      _fail(str(e))
    raise   # not an override the recipe lacks: the traceback is the report


def _disk_full(error: BaseException) -> OSError | None:
  """The ENOSPC (or quota) OSError behind `error`, however a library wrapped it."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return error
    error = error.__cause__ or error.__context__
  return None


def _disk_full_message(error: OSError, workdir: str) -> str:
  # A failed write() on an open file carries no name; the workdir is where the job writes.
  where = error.filename or (f'a file in {workdir}' if workdir else 'an output file')
  return (f'the disk is full: {where} could not be written ({error.strerror}); free space there '
          'or pass another --config.workdir, then rerun the same command.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; settings go as --config.a.b=value')
  if _CONFIG.value is None:
    raise app.UsageError('pass a recipe: --config configs/demo.py')
  logging.getLogger().setLevel(logging.INFO)
  _quiet_libraries()
  _skip_absent_tpu()
  _join_other_processes()
  config = _CONFIG.value
  try:
    result = jobs.run(config)
  except ConfigError as e:
    _fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    lost = multihost.lost_peer(e)
    if lost:
      multihost.exit_lost_peer(lost)
    full = _disk_full(e)
    if full is None:
      raise
    _fail(_disk_full_message(full, config.get('workdir') or ''))
  if isinstance(result, dict) and result.get('stopped_early'):
    # Stopped by SIGTERM with a checkpoint to resume from: not a success, for a scheduler.
    sys.exit(train_checkpoint.EXIT_STOPPED)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
