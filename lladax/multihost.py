"""What the processes of a multi-host job agree on: one writer, names chosen once, meeting points.

Every helper is a no-op (or the local value) in a single-process job, so callers need no branch.
"""
from __future__ import annotations

import json

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
