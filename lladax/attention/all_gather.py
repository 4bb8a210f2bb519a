"""All-gather context parallelism: queries stay split over `context`, keys and values are whole.

XLA gathers K, V and the key segment ids over the context axis before the shard_map (and
reduce-scatters their gradients after it); each shard then runs an ordinary kernel on its query
block against the full key sequence. Simpler than the ring and as fast while the gathered K/V fit
(about 2 GiB per 128K sequence per layer for LLaDA-8B in bfloat16); the ring keeps only 1/n of them.
"""
from __future__ import annotations

import functools

import jax

from lladax.attention import blockwise, flash_gpu, sharded, splash

INNER = ('blockwise', 'splash', 'flash_gpu')


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, inner: str = 'blockwise',
              **options) -> jax.Array:
  """The `all_gather` kernel; `inner` runs per shard with its options (block sizes, interpret)."""
  if inner in ('splash', 'flash_gpu'):   # both gather K/V over `context` themselves
    pallas = splash if inner == 'splash' else flash_gpu
    return pallas.attention(q, k, v, q_segment_ids, kv_segment_ids, scale=scale, **options)
  if inner != 'blockwise':
    raise ValueError(f'unknown all_gather inner kernel {inner!r}; choose one of '
                     f'{", ".join(INNER)}.')
  local = functools.partial(blockwise.attention, scale=scale, **options)
  lay = sharded.layout(q, k)
  if lay is None:
    return local(q, k, v, q_segment_ids, kv_segment_ids)
  return sharded.shard_attention(local, lay, q, k, v, q_segment_ids, kv_segment_ids,
                                 gather_kv=True)
