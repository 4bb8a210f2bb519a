"""Training checkpoints with orbax: parameters, optimizer state, step, RNG and the data iterator.

Each saved step holds three items: `state` (the array pytree, restored straight into whatever
shardings the new run's mesh gives), `data` (the input pipeline's JSON state) and `meta` (what the
state must match: the model's shape and the data settings). Saves are asynchronous; orbax
finalises a step only when all of it is written, so a killed save leaves no step behind. A step
that cannot be read is skipped with a warning and the previous one is used; a step that belongs
to another model or data recipe is refused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading

import jax
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ConfigError

ITEMS = ('state', 'data', 'meta')


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 100          # save every N steps (and always at the end and on SIGTERM)
  keep: int = 3             # how many recent steps to keep
  async_save: bool = True   # write in the background while training continues

  def __post_init__(self):
    if self.every <= 0 or self.keep <= 0:
      raise ConfigError('config.checkpoint_every and keep must be positive.')


class TrainCheckpoints:
  """The checkpoints of one run, in `<workdir>/checkpoints` (local or gs://)."""

  def __init__(self, directory: str, cfg: CheckpointConfig, meta: dict):
    self.meta = json.loads(json.dumps(meta))  # as it reads back: tuples become lists
    self.cfg = cfg
    self.manager = ocp.CheckpointManager(
        epath.Path(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep,
                                             enable_async_checkpointing=cfg.async_save),
        item_names=ITEMS)

  def save(self, step: int, state, data_state: dict | None) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(self.meta)), force=True)

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest readable step, or None for a fresh run."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        self._check(step, meta['meta'])
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint step %d in %s cannot be read (%s: %s); trying the previous '
                        'one', step, self.manager.directory, type(e).__name__, str(e)[:300])
        continue
      logging.info('resuming from step %d of %s', step, self.manager.directory)
      return step, got['state'], got['data'] or None
    return None

  def _check(self, step: int, saved: dict) -> None:
    for key, want in self.meta.items():
      have = saved.get(key)
      if have != want:
        raise ConfigError(
            f'checkpoint step {step} in {self.manager.directory} was written with {key}={have} '
            f'but this run has {key}={want}; use a new config.workdir, or the recipe that wrote it.')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class Preemption:
  """Notices SIGTERM (how Cloud TPU announces a preemption) so the loop can save and stop.

  With several processes, every process must stop at the same step: jax's preemption sync point
  agrees on one when jax.distributed is initialised.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('SIGTERM: saving a checkpoint and stopping')
    self._flag.set()

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step)) or self._flag.is_set()
      except RuntimeError:  # no preemption sync manager (not initialised through distributed)
        pass
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
