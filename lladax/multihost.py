"""What the processes of a multi-host job agree on: one writer, names chosen once, meeting points.

Every helper is a no-op (or the local value) in a single-process job, so callers need no branch.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import jax
import numpy as np


def is_writer() -> bool:
  """Whether this process writes the files that exist once per job (configs, checksums, renames);
  arrays are written by every process, each its own shards."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (bounded by jax.distributed's heartbeat: a dead peer
  ends the wait with an error)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f'lladax: {name}')


def _as_bytes(text: str, size: int) -> np.ndarray:
  data = text.encode()
  return np.frombuffer(data.ljust(size, b'\0'), np.uint8)


def writers_text(text: str) -> str:
  """Process 0's `text` on every process (e.g. a random temporary name, which each process would
  otherwise draw differently)."""
  if jax.process_count() == 1:
    return text
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  size = np.asarray(multihost_utils.broadcast_one_to_all(np.int32(len(text.encode()))))
  got = multihost_utils.broadcast_one_to_all(_as_bytes(text, int(size)) if is_writer() else
                                             np.zeros(int(size), np.uint8))
  return np.asarray(got).tobytes().decode()


def gather_json(value) -> list:
  """Every process's JSON-serialisable `value`, in process order."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  text = json.dumps(value, sort_keys=True)
  longest = int(np.max(multihost_utils.process_allgather(np.int32(len(text.encode())))))
  rows = multihost_utils.process_allgather(_as_bytes(text, longest))
  return [json.loads(np.asarray(row).tobytes().rstrip(b'\0').decode()) for row in rows]


# What JAX raises in one process when another of the job vanished: a collective's transport
# error (gloo, NCCL, ICI) or the coordination service's heartbeat and barrier errors.
_PEER_LOST = ('Gloo', 'NCCL', 'Connection reset', 'Connection refused', 'heartbeat',
              'coordination service', 'Barrier', 'UNAVAILABLE', 'DEADLINE_EXCEEDED')
EXIT_PEER_LOST = 75   # EX_TEMPFAIL: another process failed; rerunning the job resumes it


def lost_peer(error: BaseException) -> str | None:
  """The first line of `error` when it says that another process of a multi-host job is gone."""
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  text = str(error)
  if not any(marker in text for marker in _PEER_LOST):
    return None
  return (text.strip().splitlines() or [type(error).__name__])[0][:300]


def exit_lost_peer(detail: str) -> None:
  """Ends this process at once with one line saying why. os._exit: the normal exit would wait in
  jax.distributed's shutdown barrier for the dead process until the heartbeat timeout, then abort
  with a page of C++ logs."""
  print(f'lladax: process {jax.process_index()} of {jax.process_count()} stopped because another '
        f'process of the job is gone ({detail}); find why in that process\'s log, then rerun '
        'the same command on every host to resume from the last checkpoint.', file=sys.stderr)
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_PEER_LOST)
