"""Training checkpoints with orbax: parameters, optimizer state, step, RNG and the data iterator.

Each saved step holds four items: `state` (the array pytree, restored straight into whatever
shardings the new run's mesh gives), `data` (the input pipeline's JSON state), `meta` (what the
state must match: the model's shape and the data settings) and `checksums` (of the other three,
verified on restore: orbax restores flipped bytes in array data without complaint). Saves are
asynchronous; orbax finalises a step only when all of it is written, so a killed save leaves no
step behind (its temporary folder is removed when the next run opens the directory). A step that
cannot be read or fails its checksums is renamed aside (`<step>.corrupt`, never deleted) with a
warning and the previous one is used; a step that belongs to another model or data recipe is
refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ConfigError, refuse_other_settings
from lladax.data import shards

ITEMS = ('state', 'data', 'meta', 'checksums')
# What a run stopped by SIGTERM exits with: 128 + SIGTERM, as if the signal had ended it, so a
# scheduler reads "stopped, restartable", not success.
EXIT_STOPPED = 128 + signal.SIGTERM


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """From config.train: checkpoint_every, keep_checkpoints, async_checkpoints."""
  every: int = 100          # save every N steps (and always at the end and on SIGTERM)
  keep: int = 3             # how many recent steps to keep
  async_save: bool = True   # write in the background while training continues

  def __post_init__(self):
    if self.every <= 0 or self.keep <= 0:
      raise ConfigError('config.train.checkpoint_every and keep_checkpoints must be positive.')


class CorruptCheckpoint(Exception):
  """A saved step whose contents do not match the checksums written with it."""


def _as_words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (a trailing axis of 2 for 64-bit types)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_sums(x) -> jax.Array:
  """Two 32-bit sums of an array's bits: plain and weighted by (2 * flat index + 1), so any bit
  flip changes both and moved values change the second. Integer sums wrap and are exact, so the
  result does not depend on the mesh or the reduction order (a resume may use another mesh).
  Elementwise then reduced: sharded arrays are summed in place, never gathered."""
  words = _as_words(jnp.asarray(x))
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride)
    stride = (stride * words.shape[axis]) % 2**32
  weighted = words * (index * jnp.uint32(2) + jnp.uint32(1))
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(weighted, dtype=jnp.uint32)])


_tree_sums = jax.jit(lambda tree: jax.tree.map(_leaf_sums, tree))


def array_checksums(tree) -> dict[str, list]:
  """{key path: [dtype, shape, sum, weighted sum]} for every array of `tree`."""
  sums = jax.device_get(_tree_sums(tree))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  got = jax.tree.leaves(sums)
  return {jax.tree_util.keystr(path): [str(np.dtype(leaf.dtype)), list(np.shape(leaf)),
                                       int(s[0]), int(s[1])]
          for (path, leaf), s in zip(leaves, got)}


def digest(value) -> str:
  """sha256 of a JSON value, keys sorted."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _all_agree(ok: bool) -> bool:
  """Whether every process found `ok`: processes read different shards, and all must fall back
  (or not) together."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class TrainCheckpoints:
  """The checkpoints of one run, in `<workdir>/checkpoints` (local or gs://)."""

  def __init__(self, directory: str, cfg: CheckpointConfig, meta: dict):
    self.meta = json.loads(json.dumps(meta))  # as it reads back: tuples become lists
    self.cfg = cfg
    self.manager = ocp.CheckpointManager(
        epath.Path(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save,
            # Only orbax's own '<step>.orbax-checkpoint-tmp-*' folders of killed saves.
            cleanup_tmp_directories=True),
        item_names=ITEMS)

  def save(self, step: int, state, data_state: dict | None) -> None:
    data_state = shards.gathered_state(data_state or {})   # every process's streams
    sums = {'state': array_checksums(state), 'data': digest(data_state),
            'meta': digest(self.meta)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(self.meta), checksums=ocp.args.JsonSave(sums)), force=True)

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest readable step, or None for a fresh run.

    Steps that cannot be read or fail their checksums are moved aside on the way.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        got = self._restore(step, abstract_state)
        problem = None
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        problem = (str(e) if isinstance(e, CorruptCheckpoint) else
                   f'{type(e).__name__}: {str(e)[:300]}')
      if _all_agree(problem is None):
        logging.info('resuming from step %d of %s', step, self.manager.directory)
        return got
      self._move_aside(step, problem or 'another process could not read it')
    return None

  def _restore(self, step: int, abstract_state):
    """(step, state, data_state) of `step`, verified against its checksums when it has them."""
    item = lambda name: self.manager.directory / str(step) / name
    sums = None
    if item('checksums').exists():
      sums = self._item(step, 'checksums', ocp.args.JsonRestore())
    else:
      logging.warning('checkpoint step %d in %s has no checksums (written before lladax '
                      'recorded them); its arrays cannot be verified', step,
                      self.manager.directory)
    meta = self._item(step, 'meta', ocp.args.JsonRestore())
    if sums and digest(meta) != sums['meta']:
      raise CorruptCheckpoint(f'{item("meta")} does not match its checksum')
    self._check(step, meta)
    target = abstract_state
    if sums:
      target = self._as_saved(step, abstract_state, sums['state'])
    got = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    if sums:
      self._verify(step, got, sums)
    # A resume may change param_dtype (a compute setting): verified as stored, then cast.
    state = jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype),
                         got['state'], abstract_state)
    return step, state, got['data']

  def _item(self, step: int, name: str, args):
    return self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

  def _as_saved(self, step: int, abstract_state, saved: dict):
    """`abstract_state` with the dtypes the step was written in; a step whose arrays have other
    names or shapes belongs to another recipe (e.g. other optimizer settings): refused."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    want = {jax.tree_util.keystr(p): list(a.shape) for p, a in leaves}
    have = {k: v[1] for k, v in saved.items()}
    if want != have:
      differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
      raise ConfigError(
          f'checkpoint step {step} in {self.manager.directory} holds other arrays than this run '
          f'({differ[0]}: saved {have.get(differ[0])}, this run {want.get(differ[0])}); use '
          'the recipe that wrote it (model and optimizer settings), or a new config.workdir.')
    return jax.tree_util.tree_unflatten(treedef, [
        jax.ShapeDtypeStruct(a.shape, np.dtype(saved[jax.tree_util.keystr(p)][0]),
                             sharding=getattr(a, 'sharding', None)) for p, a in leaves])

  def _verify(self, step: int, got: dict, sums: dict) -> None:
    where = self.manager.directory / str(step)
    if digest(got['data']) != sums['data']:
      raise CorruptCheckpoint(f'{where / "data"} does not match its checksum')
    have = array_checksums(got['state'])
    bad = sorted(k for k, v in sums['state'].items() if have.get(k) != v)
    if bad:
      raise CorruptCheckpoint(
          f'the array data under {where / "state"} does not match the checksums written with '
          f'it ({len(bad)} of {len(have)} arrays differ, first {bad[0]})')

  def _move_aside(self, step: int, problem: str) -> None:
    """Renames the step out of orbax's sight (never deletes it), so the run can save that step
    number again when it gets there."""
    source = self.manager.directory / str(step)
    aside = self.manager.directory / f'{step}.corrupt'
    n = 1
    while aside.exists():
      n += 1
      aside = self.manager.directory / f'{step}.corrupt{n}'
    if jax.process_index() == 0:
      source.rename(aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f'lladax: moved checkpoint step {step} aside')
    self.manager.reload()
    logging.warning('checkpoint step %d cannot be used (%s); moved it to %s and trying the '
                    'previous step', step, problem, aside)

  def _check(self, step: int, saved: dict) -> None:
    refuse_other_settings({k: saved.get(k) for k in self.meta}, self.meta,
                          f'checkpoint step {step} in {self.manager.directory}',
                          'use a new config.workdir, or the recipe that wrote it.')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class Preempted(BaseException):
  """SIGTERM arrived while the job was waiting (for data, a restore, a compile). A BaseException,
  so that no `except Exception` on the way (a restore's fallback, a data reader's) swallows it."""


class Preemption:
  """Notices SIGTERM (how Cloud TPU and schedulers announce a stop).

  During a step SIGTERM only sets a flag: the loop saves and stops when the step is done. Inside
  `waiting()` (data, restore, compile: anything that may block for long) it raises Preempted at
  once, so the job stops whatever it waits on. With several processes, every process must stop
  at the same step: jax's preemption sync point agrees on one when jax.distributed is
  initialised.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._waiting = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    first = not self._flag.is_set()
    self._flag.set()
    if self._waiting:
      self._waiting = False  # raised once: the cleanup that follows must run to its end
      logging.warning('SIGTERM: stopping now')
      raise Preempted()
    if first:
      logging.warning('SIGTERM: saving a checkpoint after this step and stopping')

  @contextlib.contextmanager
  def waiting(self, enabled: bool = True):
    """A stretch where SIGTERM stops the job at once (raises Preempted), also when it came
    before the stretch began."""
    if not enabled:
      yield
      return
    self._waiting = True  # before the check: a signal in between then raises, not only flags
    try:
      if self._flag.is_set():
        raise Preempted()
      yield
    finally:
      self._waiting = False

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      # SIGTERM may reach one process only (this handler replaces the one jax's preemption
      # notifier installed): all stop when any got it, else the others wait in the next step's
      # collectives for a process that is saving. One tiny all-gather a step.
      anyone = not _all_agree(not self._flag.is_set())
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step)) or anyone
      except RuntimeError:  # no preemption sync manager (not initialised through distributed)
        return anyone
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
