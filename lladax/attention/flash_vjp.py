"""The custom VJP the flash-style kernels share (blockwise in XLA, flash_gpu in Pallas).

Each kernel supplies two pieces: `with_lse(q, k, v, q_seg, kv_seg, *, scale, out_dtype,
**settings) -> (out, lse)` and `grads(q, k, v, q_seg, kv_seg, lse, delta, dout, *, scale,
dkv_dtype, **settings) -> (dq, dk, dv)`. The forward keeps q, k, v, the output and the row
log-sum-exp; the backward recomputes each tile from them (FlashAttention-2), so no [T, S]
probabilities are stored. The output and lse are named for the remat policies that keep them
(lladax/remat.py): with both saved, the backward needs no rerun of the forward.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

F32 = jnp.float32


def differentiable(with_lse: Callable, grads: Callable) -> Callable:
  """fn(q, k, v, q_segment_ids, kv_segment_ids, scale, settings) -> out in q.dtype, where
  settings is a hashable tuple of (name, value) pairs both pieces take as keywords."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
  def attention(q, k, v, q_segment_ids, kv_segment_ids, scale, settings):
    out, _ = with_lse(q, k, v, q_segment_ids, kv_segment_ids, scale=scale, out_dtype=q.dtype,
                      **dict(settings))
    return out

  def forward(q, k, v, q_segment_ids, kv_segment_ids, scale, settings):
    out, lse = with_lse(q, k, v, q_segment_ids, kv_segment_ids, scale=scale, out_dtype=q.dtype,
                        **dict(settings))
    out, lse = checkpoint_name(out, 'attention_out'), checkpoint_name(lse, 'attention_lse')
    return out, (q, k, v, q_segment_ids, kv_segment_ids, out, lse)

  def backward(scale, settings, res, dout):
    q, k, v, q_segment_ids, kv_segment_ids, out, lse = res
    delta = jnp.sum(dout.astype(F32) * out.astype(F32), axis=-1)
    dq, dk, dv = grads(q, k, v, q_segment_ids, kv_segment_ids, lse, delta, dout, scale=scale,
                       dkv_dtype=k.dtype, **dict(settings))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None

  attention.defvjp(forward, backward)
  return attention
