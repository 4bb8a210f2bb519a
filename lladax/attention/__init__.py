"""The one attention function every caller uses; kernels plug in behind it by name.

All kernels are bidirectional (no causal mask) and respect segment ids: a query attends only to
keys of its own segment, and segment 0 (padding) is never attended to.
"""
from __future__ import annotations

import math
from typing import Callable

import jax

from lladax.attention import all_gather, blockwise, reference, ring, splash

# name -> fn(q, k, v, q_segment_ids, kv_segment_ids, *, scale, **options) -> out
KERNELS: dict[str, Callable] = {
    'reference': reference.attention,     # dense O(T*S) oracle, for tests and short sequences
    'blockwise': blockwise.attention,     # flash-style XLA, any backend; block_q, block_kv
    'ring': ring.attention,               # ring over `context`; block_q, block_kv, step_kernel
    'all_gather': all_gather.attention,   # K/V gathered over `context`; inner, block sizes
    'splash': splash.attention,           # Pallas TPU (interpret elsewhere); block_q, block_kv,
                                          # interpret
}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array | None = None, *, kernel: str = 'reference',
              scale: float | None = None, **options) -> jax.Array:
  """Bidirectional multi-head attention over packed sequences.

  q: [B, T, H, D]; k, v: [B, S, KH, D] with H % KH == 0 (grouped-query attention when KH < H).
  q_segment_ids: [B, T] int, 1..n per document and 0 for padding; kv_segment_ids: [B, S]
  (defaults to q_segment_ids, the self-attention case).
  options: settings of the chosen kernel (block sizes and the like; see KERNELS).
  """
  if kernel not in KERNELS:
    raise ValueError(f'unknown attention kernel {kernel!r}; available: {", ".join(sorted(KERNELS))}')
  if q.shape[2] % k.shape[2]:
    raise ValueError(f'{q.shape[2]} query heads do not divide into {k.shape[2]} key/value heads')
  if kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  return KERNELS[kernel](q, k, v, q_segment_ids, kv_segment_ids, scale=scale, **options)
