"""Dense bidirectional attention with segment ids: the oracle every faster kernel is tested against.

Memory is O(T*S) per head, so this serves tests and short sequences only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """[B, T, S] True where a query may attend a key: same segment, and the key is not padding."""
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  return same & (kv_segment_ids[:, None, :] != 0)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float) -> jax.Array:
  """q [B,T,H,D], k/v [B,S,KH,D] with H a multiple of KH; returns [B,T,H,D] in q.dtype.

  Softmax statistics are float32. A query with no visible key (padding) gets zeros, not NaN.
  """
  b, t, h, d = q.shape
  kh = k.shape[2]
  group = h // kh
  qg = q.reshape(b, t, kh, group, d)
  logits = jnp.einsum('btkgd,bskd->bkgts', qg, k, preferred_element_type=jnp.float32) * scale
  mask = segment_mask(q_segment_ids, kv_segment_ids)[:, None, None]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum('bkgts,bskd->btkgd', probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, d).astype(q.dtype)
