"""Each process's rows -> one global batch of jax.Arrays laid out on the mesh.

Rows are split over the data-parallel axes (`data`, `fsdp`) and the sequence over `context`. A
process feeds the slice of the global batch that its own devices hold; when two processes hold
the same rows (the context axis spans processes) they must feed identical rows, so the pipeline is
built with the shard `data_shard` returns rather than the raw process index.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lladax.config import ConfigError


def batch_spec(mesh: Mesh) -> PartitionSpec:
  """Rows over whichever of data / fsdp the mesh has, tokens over context if it has it."""
  rows = tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names)
  return PartitionSpec(rows or None, 'context' if 'context' in mesh.axis_names else None)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _shards(mesh: Mesh, spec: PartitionSpec, dim: int) -> int:
  return math.prod(mesh.shape[a] for a in _axes(spec[dim] if dim < len(spec) else None))


def data_shard(mesh: Mesh, spec: PartitionSpec | None = None) -> tuple[int, int]:
  """(index, count): which of `count` equal slices of the global batch this process feeds.

  Pass them to pipeline.build as process_index and process_count.
  """
  spec = batch_spec(mesh) if spec is None else spec
  n = _shards(mesh, spec, 0)
  sharding = NamedSharding(mesh, spec)
  probe = (n, max(1, _shards(mesh, spec, 1)))
  mine = set()
  for device, index in sharding.devices_indices_map(probe).items():
    if device.process_index == jax.process_index():
      rows = index[0]
      mine.update(range(*rows.indices(n)))
  lo, size = min(mine), len(mine)
  if mine != set(range(lo, lo + size)) or lo % size:
    raise ConfigError(f'this process holds rows {sorted(mine)} of {n} batch shards, not one '
                      'contiguous block; order the mesh devices so each process holds a block.')
  return lo // size, n // size


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                 spec: PartitionSpec | None = None) -> dict[str, jax.Array]:
  """This process's rows [b, T] -> global jax.Arrays [b * count, T] sharded by `spec`.

  `b` must split evenly over the batch shards this process holds, and T over the context axis.
  """
  spec = batch_spec(mesh) if spec is None else spec
  sharding = NamedSharding(mesh, spec)
  index, count = data_shard(mesh, spec)
  del index
  out = {}
  for key, rows in batch.items():
    b, t = rows.shape[:2]
    local = _shards(mesh, spec, 0) // count
    if b % local:
      raise ConfigError(f'{b} rows per process do not split over the {local} batch shards this '
                        f'process holds; make config.pipeline.batch_size a multiple of {local}.')
    context = _shards(mesh, spec, 1)
    if t % context:
      raise ConfigError(f'rows of {t} tokens do not split over {context} context shards; make '
                        f'config.pipeline.seq_len a multiple of {context}.')
    out[key] = jax.make_array_from_process_local_data(sharding, rows, (b * count,) + rows.shape[1:])
  return out
