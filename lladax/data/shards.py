"""A process's share of the global batch as one or more document streams, and their saved state.

The document stream is cut into `config.pipeline.shards` streams (stream k reads documents
k, k + S, k + 2S, ...; each packs its own rows); the global batch is the rows of stream 0, then
stream 1, ... A process feeds a contiguous block of the batch (global_batch.data_shard), so it
reads the streams of its block. With S fixed, the batches do not depend on how many processes
read them: 2 hosts x 4 devices and 1 host x 8 devices train on the same batches, and a
checkpoint's data state (every stream's, gathered at save) resumes on either. shards=0 keeps one
stream per process block, whose state resumes on the same number of processes only.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lladax import multihost
from lladax.config import ConfigError
from lladax.data import pipeline as pipeline_lib


def my_streams(shards: int, index: int, count: int, rows: int) -> tuple[range, int]:
  """(the streams process block `index` of `count` reads, rows each gives) for `rows` rows a
  batch; shards=0 means one stream per block."""
  shards = shards or count
  if shards < 0 or shards % count:
    raise ConfigError(f'config.pipeline.shards={shards} does not split over the {count} '
                      f'process blocks that feed the batch; make it a multiple of {count} '
                      '(or 0: one stream per process).')
  per = shards // count
  if rows % per:
    raise ConfigError(f'the {rows} rows this process feeds do not split over its {per} '
                      f'streams (config.pipeline.shards={shards}); make config.data.batch_size a '
                      f'multiple of {shards}.')
  return range(index * per, (index + 1) * per), rows // per


class Streams:
  """The pipelines of this process's streams, read in step: one batch is their rows stacked."""

  def __init__(self, pipes: dict[int, pipeline_lib.Pipeline], total: int):
    self._pipes = pipes
    self._total = total

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(p) for p in self._pipes.values()]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    return {'shards': {str(k): p.get_state() for k, p in self._pipes.items()},
            'shard_count': self._total}

  def set_state(self, state: dict) -> None:
    if 'shards' not in state and len(self._pipes) == 1:
      next(iter(self._pipes.values())).set_state(state)   # one stream's state (older lladax)
      return
    saved = state.get('shards') or {}
    for k, pipe in self._pipes.items():
      if str(k) not in saved:
        raise ConfigError(
            f'the saved data state holds streams {sorted(saved, key=int)} of '
            f'{state.get("shard_count")}, not stream {k} of {self._total} that this process '
            'reads: it was written by another number of processes with config.pipeline.shards=0;'
            ' resume on that many processes, or set config.pipeline.shards to a multiple of both '
            'process counts for a new run.')
      pipe.set_state(saved[str(k)])

  def close(self) -> None:
    for pipe in self._pipes.values():
      pipe.close()


def open_streams(pcfg: pipeline_lib.PipelineConfig, tokenizer, *, rows: int, index: int,
                 count: int, **ids) -> Streams:
  """This process's streams (process block `index` of `count`), `rows` rows a batch in all."""
  streams, each = my_streams(pcfg.shards, index, count, rows)
  total = pcfg.shards or count
  one = dataclasses.replace(pcfg, batch_size=each)
  return Streams({k: pipeline_lib.build(one, tokenizer, process_index=k, process_count=total,
                                        **ids) for k in streams}, total)


def gathered_state(state: dict) -> dict:
  """Every process's streams in one data state (call on all processes; a checkpoint stores one
  data state, written by process 0)."""
  if not isinstance(state, dict) or 'shards' not in state:
    return state
  merged = {}
  for one in multihost.gather_json(state):
    merged.update(one['shards'])
  return {'shards': dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
          'shard_count': state['shard_count']}
