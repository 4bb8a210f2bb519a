"""Ring attention: context parallelism over the `context` mesh axis, bidirectional, packed.

Each context shard keeps its query block and passes its key/value block (with the keys'
segment ids) round the ring with lax.ppermute; after n steps every query block has met every
key block. Each step yields a partial (out, lse) from a chunk kernel, merged by log-sum-exp.

The backward pass is written by hand (a custom VJP), flash-attention-2 style: every step
recomputes its chunk pair's gradients from the saved q, k, v and the *merged* out and lse, and
the dK/dV accumulators travel round the ring with their keys, arriving home after n hops. Nothing
is differentiated through the merge, which is both cheaper and the only way to use a chunk kernel
(splash) whose residual outputs cannot be differentiated.

A full mask means every step costs the same, so no load-balancing reorder is needed.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lladax.attention import blockwise, sharded
from lladax.sharding import CONTEXT_AXIS

F32 = jnp.float32
STEP_KERNELS = ('blockwise', 'splash', 'flash_gpu')


def merge(out: jax.Array, lse: jax.Array, out_i: jax.Array,
          lse_i: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Combines two softmax-normalised partial results over disjoint keys (float32 in and out).

  A row unseen by both (lse = -inf twice) stays out = 0, lse = -inf without NaN.
  """
  m = jnp.maximum(lse, lse_i)
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  w, w_i = jnp.exp(lse - m_safe), jnp.exp(lse_i - m_safe)
  total = w + w_i
  new = jnp.where(total > 0, m_safe + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
  inv = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
  out = (out * (w * inv)[..., None]) + (out_i * (w_i * inv)[..., None])
  return out, new


def _shift(x, axis: str, n: int):
  """Sends every shard's block to the next shard round the ring."""
  return jax.lax.ppermute(x, axis, [(i, (i + 1) % n) for i in range(n)])


def _forward(q, k, v, q_seg, kv_seg, step_fwd, axis, n):
  b, t, h, d = q.shape

  def step(carry, _):
    out, lse, k, v, kv_seg = carry
    # Issue the transfer before the compute so the two can overlap.
    nxt = _shift((k, v, kv_seg), axis, n)
    out, lse = merge(out, lse, *step_fwd(q, k, v, q_seg, kv_seg))
    return (out, lse, *nxt), None

  init = (jnp.zeros((b, t, h, d), F32), jnp.full((b, t, h), -jnp.inf, F32), k, v, kv_seg)
  (out, lse, k, v, kv_seg), _ = jax.lax.scan(step, init, length=n - 1)
  return merge(out, lse, *step_fwd(q, k, v, q_seg, kv_seg))


def _backward(q, k, v, q_seg, kv_seg, out, lse, dout, step_bwd, axis, n):
  delta = jnp.sum(dout.astype(F32) * out.astype(F32), axis=-1)

  def grads(k, v, kv_seg):
    return step_bwd(q, k, v, q_seg, kv_seg, out, lse, delta, dout)

  def step(carry, _):
    dq, k, v, kv_seg, dk, dv = carry
    dq_i, dk_i, dv_i = grads(k, v, kv_seg)
    k, v, kv_seg, dk, dv = _shift((k, v, kv_seg, dk + dk_i, dv + dv_i), axis, n)
    return (dq + dq_i, k, v, kv_seg, dk, dv), None

  zeros = jnp.zeros(k.shape, F32)
  init = (jnp.zeros(q.shape, F32), k, v, kv_seg, zeros, zeros)
  (dq, k, v, kv_seg, dk, dv), _ = jax.lax.scan(step, init, length=n - 1)
  dq_i, dk_i, dv_i = grads(k, v, kv_seg)
  # One more hop brings every key block's accumulated gradient back to the shard that owns it.
  dk, dv = _shift((dk + dk_i, dv + dv_i), axis, n)
  return dq + dq_i, dk, dv


def _blockwise_steps(scale, block_q, block_kv):
  def fwd(q, k, v, q_seg, kv_seg):
    return blockwise.attention_with_lse(q, k, v, q_seg, kv_seg, scale=scale, block_q=block_q,
                                        block_kv=block_kv)

  def bwd(q, k, v, q_seg, kv_seg, out, lse, delta, dout):
    del out
    return blockwise.attention_grads(q, k, v, q_seg, kv_seg, lse, delta, dout, scale=scale,
                                     block_q=block_q, block_kv=block_kv)

  return fwd, bwd


def ring_shard(q, k, v, q_seg, kv_seg, *, axis: str, n: int, step_fwd, step_bwd):
  """The per-shard ring (call inside shard_map); differentiable through its own custom VJP.

  step_fwd(q, k, v, q_seg, kv_seg) -> (out f32, lse f32) for one chunk pair;
  step_bwd(q, k, v, q_seg, kv_seg, out, lse, delta, dout) -> (dq, dk, dv) float32 for one chunk
  pair given the merged out/lse and delta = sum(dout * out, -1).
  """

  @jax.custom_vjp
  def run(q, k, v, q_seg, kv_seg):
    out, _ = _forward(q, k, v, q_seg, kv_seg, step_fwd, axis, n)
    return out.astype(q.dtype)

  def run_fwd(q, k, v, q_seg, kv_seg):
    out, lse = _forward(q, k, v, q_seg, kv_seg, step_fwd, axis, n)
    # Named so that a remat policy can keep them (lladax/remat.py): the backward then needs no
    # second trip of the forward ring.
    out = checkpoint_name(out.astype(q.dtype), 'attention_out')
    lse = checkpoint_name(lse, 'attention_lse')
    return out, (q, k, v, q_seg, kv_seg, out, lse)

  def run_bwd(res, dout):
    q, k, v, q_seg, kv_seg, out, lse = res
    dq, dk, dv = _backward(q, k, v, q_seg, kv_seg, out, lse, dout, step_bwd, axis, n)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None

  run.defvjp(run_fwd, run_bwd)
  return run(q, k, v, q_seg, kv_seg)


@functools.cache
def _warn_no_mesh():
  logging.warning('ring attention sees no mesh, so it runs its step kernel on one device; '
                  'set the mesh with jax.set_mesh to split the sequence over %r.', CONTEXT_AXIS)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, block_q: int | None = None,
              block_kv: int | None = None, step_kernel: str = 'blockwise',
              **step_options) -> jax.Array:
  """The `ring` kernel. Without a mesh, or with a context axis of size 1, this is the step kernel.

  step_kernel: 'blockwise' (any backend), 'splash' (Pallas TPU) or 'flash_gpu' (Pallas Triton,
  NVIDIA GPU); the Pallas ones run in interpret mode elsewhere. block_q/block_kv size the tiles
  (None: the step kernel's defaults; splash rounds them to multiples of 128, flash_gpu to powers
  of two). step_options go to the
  Pallas step kernel's ring_steps (interpret; num_warps, num_stages for flash_gpu).
  """
  if step_kernel not in STEP_KERNELS:
    raise ValueError(f'unknown ring step kernel {step_kernel!r}; choose one of '
                     f'{", ".join(STEP_KERNELS)}.')
  if step_kernel == 'blockwise' and step_options:
    raise ValueError(f'ring options {sorted(step_options)} apply only to a Pallas step kernel '
                     "(splash, flash_gpu); drop them or switch the step kernel.")
  lay = sharded.layout(q, k)
  if lay is None and jax.device_count() > 1:
    _warn_no_mesh()
  # pylint: disable=import-outside-toplevel
  if step_kernel == 'splash':
    from lladax.attention import splash as step_module
  elif step_kernel == 'flash_gpu':
    from lladax.attention import flash_gpu as step_module
  else:
    step_module = blockwise
  options = {name: size for name, size in (('block_q', block_q), ('block_kv', block_kv))
             if size is not None}
  options.update(step_options)
  if lay is None or lay.context_size == 1:
    return step_module.attention(q, k, v, q_segment_ids, kv_segment_ids, scale=scale, **options)
  if step_module is blockwise:
    step_fwd, step_bwd = _blockwise_steps(scale, block_q or blockwise.BLOCK_Q,
                                          block_kv or blockwise.BLOCK_KV)
  else:
    step_fwd, step_bwd = step_module.ring_steps(scale=scale, **options)
  per_shard = functools.partial(ring_shard, axis=lay.context, n=lay.context_size,
                                step_fwd=step_fwd, step_bwd=step_bwd)
  return sharded.shard_attention(per_shard, lay, q, k, v, q_segment_ids, kv_segment_ids,
                                 gather_kv=False)
