"""Pallas TPU splash attention with segment ids, bidirectional (FullMask), inside jax.shard_map.

Under a mesh, each device runs splash on its batch rows, heads and query positions; keys,
values and their segment ids are gathered over the `context` axis (all-gather context
parallelism, the MaxText default), and their gradients summed back by the shard_map transpose.
Grouped-query attention is native to splash's MHA kernel (key heads dividing query heads).

Away from TPU the kernel runs in Pallas interpret mode (slow; for tests), chosen automatically
from the platform being compiled for, forced by `interpret=` or LLADAX_SPLASH_INTERPRET=1/0.

Splash differs from lladax's rules in two places, both fixed here:
  * it lets a padding query (segment 0) attend padding keys: query ids 0 become -1, which no key
    carries;
  * a row with no visible key gets an average of values instead of zeros: such rows are found
    (a membership test of query ids in the key ids, O(S log S)) and zeroed. Their output
    cotangent is then zero, which keeps their finite, meaningless probabilities out of every
    gradient.
Block sizes must be multiples of 128; sequences are padded up to a block with segment 0.
"""
from __future__ import annotations

import functools
import inspect
import os

import jax
import jax.numpy as jnp

from lladax.attention import sharded

F32 = jnp.float32
BLOCK = 512     # default query and key tile (rounded to a multiple of 128, clamped to the length)
LANES = 128     # splash tiles are multiples of this
ENV_INTERPRET = 'LLADAX_SPLASH_INTERPRET'


def _pallas():
  """The splash modules, imported on first use so that `import lladax` never depends on them."""
  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sak
  return sa, sak


def use_interpret(interpret: bool | None = None) -> bool:
  """Interpret mode unless compiling for TPU; `interpret` or the environment variable overrides."""
  if interpret is not None:
    return bool(interpret)
  env = os.environ.get(ENV_INTERPRET, '').strip().lower()
  if env:
    if env not in ('0', '1', 'true', 'false'):
      raise ValueError(f'{ENV_INTERPRET}={env!r} is not a switch; set it to 1 or 0.')
    return env in ('1', 'true')
  return sharded.platform() != 'tpu'


def _round_block(block: int, length: int) -> int:
  block = max(LANES, -(-block // LANES) * LANES)
  return min(block, -(-length // LANES) * LANES)


def _pad(x: jax.Array, length: int, axis: int, value=0) -> jax.Array:
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _kernel(heads: int, t: int, s: int, block_q: int, block_kv: int, interpret: bool,
            save_residuals: bool):
  sa, _ = _pallas()
  sizes = sa.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                        block_q_dkv=block_q, block_kv_dkv=block_kv,
                        block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  mask = sa.MultiHeadMask([sa.FullMask((t, s)) for _ in range(heads)])
  # The residual name lets a remat policy keep splash's out and lse (lladax/remat.py).
  return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            save_residuals=save_residuals, interpret=interpret,
                            residual_checkpoint_name='attention_residuals')


def has_key(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """[B, T] True where a query's (nonzero) segment occurs among the keys."""
  def row(q, kv):
    kv = jnp.sort(kv)
    i = jnp.clip(jnp.searchsorted(kv, q), 0, kv.shape[0] - 1)
    return (kv[i] == q) & (q != 0)
  return jax.vmap(row)(q_segment_ids, kv_segment_ids)


class _Prepared:
  """Operands in splash's layout: head-major, scaled, padded to whole tiles, ids remapped."""

  def __init__(self, q, k, v, q_seg, kv_seg, scale, block_q, block_kv):
    self.t, self.s = q.shape[1], k.shape[1]
    self.bq = _round_block(block_q, self.t)
    self.bk = _round_block(block_kv, self.s)
    self.tp = -(-self.t // self.bq) * self.bq
    self.sp = -(-self.s // self.bk) * self.bk
    self.dtype = q.dtype
    self.q = self.heads_major(_pad((q.astype(F32) * scale).astype(q.dtype), self.tp, 1))
    self.k = self.heads_major(_pad(k, self.sp, 1))
    self.v = self.heads_major(_pad(v, self.sp, 1))
    q_seg = jnp.where(q_seg == 0, -1, q_seg).astype(jnp.int32)
    kv_seg = kv_seg.astype(jnp.int32)
    self.seg = _pallas()[0].SegmentIds(_pad(q_seg, self.tp, 1, -1), _pad(kv_seg, self.sp, 1))

  @staticmethod
  def heads_major(x):
    return jnp.swapaxes(x, 1, 2)   # [B, L, H, D] -> [B, H, L, D]

  def rows(self, x, length):
    """[B, H, Lp, ...] back to [B, L, H, ...]."""
    return jnp.swapaxes(x, 1, 2)[:, :length]

  def kernel(self, interpret, save_residuals):
    return _kernel(self.q.shape[1], self.tp, self.sp, self.bq, self.bk, interpret, save_residuals)


def attention_local(q, k, v, q_segment_ids, kv_segment_ids, *, scale: float, block_q: int = BLOCK,
                    block_kv: int = BLOCK, interpret: bool = False) -> jax.Array:
  """Splash on unsharded operands (one device, or one shard inside a shard_map)."""
  p = _Prepared(q, k, v, q_segment_ids, kv_segment_ids, scale, block_q, block_kv)
  kernel = p.kernel(interpret, save_residuals=False)
  out = jax.vmap(kernel)(p.q, p.k, p.v, p.seg)
  out = p.rows(out, p.t)
  keep = has_key(q_segment_ids, kv_segment_ids)[:, :, None, None]
  return jnp.where(keep, out, 0).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, block_q: int = BLOCK,
              block_kv: int = BLOCK, interpret: bool | None = None) -> jax.Array:
  """The `splash` kernel; under a mesh, all-gather context parallelism inside jax.shard_map."""
  local = functools.partial(attention_local, scale=scale, block_q=block_q, block_kv=block_kv,
                            interpret=use_interpret(interpret))
  lay = sharded.layout(q, k)
  if lay is None:
    return local(q, k, v, q_segment_ids, kv_segment_ids)
  return sharded.shard_attention(local, lay, q, k, v, q_segment_ids, kv_segment_ids,
                                 gather_kv=True)


# --- splash as the per-step kernel of the ring -------------------------------------------------

_BWD_PARAMS = ('save_residuals', 'mask_value', 'is_mqa', 'block_sizes', 'residual_checkpoint_name',
               'mask_function', 'attn_logits_soft_cap', 'interpret', 'res', 'do')


def _private_backward():
  """splash's own backward given (out, lse); private, so its signature is checked before use."""
  bwd = getattr(_pallas()[1], '_splash_attention_bwd', None)
  if bwd is None or tuple(inspect.signature(bwd).parameters) != _BWD_PARAMS:
    raise NotImplementedError(
        f'this jax ({jax.__version__}) changed the private splash backward the ring relies on; '
        "use the ring with step_kernel='blockwise', or the 'splash' (all-gather) kernel.")
  return bwd


def ring_steps(*, scale: float, block_q: int = BLOCK, block_kv: int = BLOCK,
               interpret: bool | None = None):
  """(step_fwd, step_bwd) for lladax.attention.ring built on splash (see ring.ring_shard).

  The forward uses splash's residual output (the per-row log-sum-exp); the backward calls
  splash's dq/dkv kernels with the ring's merged out and lse, so each step yields its exact share.
  """
  interpret = use_interpret(interpret)
  bwd = _private_backward()
  # Rows that see no key come back with lse near the mask value (a huge negative), not -inf.
  empty = 0.5 * _pallas()[1].DEFAULT_MASK_VALUE

  def step_fwd(q, k, v, q_seg, kv_seg):
    p = _Prepared(q, k, v, q_seg, kv_seg, scale, block_q, block_kv)
    out, (lse,) = jax.vmap(p.kernel(interpret, save_residuals=True))(p.q, p.k, p.v, p.seg)
    out, lse = p.rows(out, p.t).astype(F32), p.rows(lse, p.t)
    seen = lse > empty
    return jnp.where(seen[..., None], out, 0.0), jnp.where(seen, lse, -jnp.inf)

  def step_bwd(q, k, v, q_seg, kv_seg, out, lse, delta, dout):
    del delta   # splash recomputes it from out and dout
    p = _Prepared(q, k, v, q_seg, kv_seg, scale, block_q, block_kv)
    kernel = p.kernel(interpret, save_residuals=False)
    kw = kernel.kwargs
    # A row with no key anywhere has lse = -inf; any finite value makes its probabilities 0.
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    out_h = p.heads_major(_pad(out.astype(p.dtype), p.tp, 1))
    do_h = p.heads_major(_pad(dout.astype(p.dtype), p.tp, 1))
    lse_h = jnp.swapaxes(_pad(lse.astype(F32), p.tp, 1), 1, 2)

    def one(q, k, v, seg, o, l, do):
      res = (q, k, v, seg, None, o, l, kernel.dq_mask_info, kernel.dkv_mask_info)
      grads = bwd(False, kw['mask_value'], kw['is_mqa'], kw['block_sizes'], None,
                  kw['mask_function'], kw['attn_logits_soft_cap'], kw['interpret'], res, do)
      return grads[3:6]

    dq, dk, dv = jax.vmap(one)(p.q, p.k, p.v, p.seg, out_h, lse_h, do_h)
    # splash differentiates with respect to the scaled query.
    dq = p.rows(dq, p.t).astype(F32) * scale
    return dq, p.rows(dk, p.s).astype(F32), p.rows(dv, p.s).astype(F32)

  return step_fwd, step_bwd
