"""Flash-style attention in plain XLA: online softmax over key blocks, memory linear in length.

Runs on any backend. The forward pass walks query blocks (outer) and key blocks (inner), keeping
a running max, denominator and output per query row; only one [block_q, block_kv] tile of logits
per head exists at a time. The backward pass (flash-attention-2 style) recomputes each tile from
the saved q, k, v and the row log-sum-exp instead of storing probabilities.

A query row that sees no key (padding, or no key of its segment in this chunk) gets out = 0 and
lse = -inf, and contributes nothing to any gradient; no NaN is produced on the way. Tile pairs
with no visible pair are skipped at run time, which pays off for many short packed documents.

`attention_with_lse` and `attention_grads` are the chunk-level pieces the ring kernel reuses: the
forward of one query chunk against one key chunk, and that chunk pair's gradients given the
row statistics of the whole (merged) attention.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lladax.attention import flash_vjp

F32 = jnp.float32
BLOCK_Q = 512    # query rows per tile
BLOCK_KV = 512   # keys per tile
# On CPU a [H, 256, 512] float32 tile (4 MiB at 8 heads) stays in the last-level cache between
# its dots and softmax passes: per call at 8K tokens (8 heads of 64) 0.77x the time of 512x512
# tiles, the best of 128-1024 rows by 256-1024 keys on the 2-core machine of issue 20.
CPU_BLOCK_Q = 256


def _slice(x: jax.Array, i, size: int) -> jax.Array:
  """Block i (of `size` positions) along the length axis 1, without copying the rest."""
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _pad(x: jax.Array, length: int) -> jax.Array:
  if x.shape[1] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, length - x.shape[1])
  return jnp.pad(x, widths)   # zeros: padded segment ids are 0, so padded rows and keys are inert


def _tiling(length: int, block: int) -> tuple[int, int]:
  """(block, count) covering `length`; a sequence shorter than the block is one block."""
  if block <= 0:
    raise ValueError(f'attention tile size {block} is not positive; pass block_q and block_kv '
                     'of at least 1 (512 is the default).')
  block = min(block, length)
  return block, -(-length // block)


def _visible(q_seg: jax.Array, kv_seg: jax.Array) -> jax.Array:
  """[B, 1, 1, bq, bk]: same segment, and the key is not padding (broadcasts over heads)."""
  same = (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
  return same[:, None, None]


# What a tile needs, from its segment ids: nothing (no pair visible), the plain tile (every pair
# visible: one document, no padding) or the masked one. The plain tile skips the mask's pass over
# [B, H, bq, bk], which costs as much as the softmax's own passes on CPU.
SKIP, FULL, MASKED = 0, 1, 2


def _tile_kind(q_seg: jax.Array, kv_seg: jax.Array) -> jax.Array:
  """SKIP, FULL or MASKED for a q block's and a key block's segment ids [B, bq], [B, bk].

  Decided from the blocks' id ranges, O(bq + bk) rather than a [bq, bk] mask: disjoint ranges
  (or only padding keys) see nothing; one shared nonzero id everywhere sees everything. A masked
  tile checks its mask and still skips when nothing turns out visible."""
  q_lo, q_hi = jnp.min(q_seg), jnp.max(q_seg)
  k_lo, k_hi = jnp.min(kv_seg), jnp.max(kv_seg)
  full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo) & (q_lo != 0)
  none = (q_hi < k_lo) | (k_hi < q_lo) | (k_hi == 0)
  return jnp.where(full, FULL, jnp.where(none, SKIP, MASKED))


def _run_tile(kind: jax.Array, tile, carry, q_seg: jax.Array, kv_seg: jax.Array):
  """carry after `tile(carry, visible)` (visible None for a FULL tile, where all pairs are)."""

  def masked(c):
    visible = _visible(q_seg, kv_seg)
    return jax.lax.cond(jnp.any(visible), lambda c: tile(c, visible), lambda c: c, c)

  return jax.lax.switch(kind, (lambda c: c, lambda c: tile(c, None), masked), carry)


def _logits(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
  """q [B, KH, G, bq, D], k [B, KH, bk, D] -> [B, KH, G, bq, bk] float32."""
  return jnp.einsum('bkgqd,bksd->bkgqs', q, k, preferred_element_type=F32) * scale


# The loops run head-major: q and dout as [B, KH, G, T, D], k and v as [B, KH, S, D], each
# transposed once per call. Every tile's dots are then plain batched matmuls over (B, KH) with
# their operands and results in place; sequence-major tiles made XLA transpose each key tile once
# per query block and each output tile again (on CPU, 1.6x the tile's time at 256x512 tokens and
# 2.7x at 512x512).
def _heads_major(x: jax.Array, kv_heads: int) -> jax.Array:
  """[B, T, H, D] -> [B, KH, H/KH, T, D]."""
  b, t, h, d = x.shape
  return jnp.moveaxis(x.reshape(b, t, kv_heads, h // kv_heads, d), 1, 3)


def _kv_major(x: jax.Array) -> jax.Array:
  """[B, S, KH, D] <-> [B, KH, S, D]."""
  return jnp.moveaxis(x, 1, 2)


def _seq_major(x: jax.Array) -> jax.Array:
  """[B, KH, G, T, ...] -> [B, T, KH*G, ...], the inverse of _heads_major (lse without D)."""
  b, kh, g, t = x.shape[:4]
  return jnp.moveaxis(x, 3, 1).reshape((b, t, kh * g) + x.shape[4:])


def _slice_at(x: jax.Array, i, size: int, axis: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, *, scale: float) -> tuple[jax.Array, jax.Array]:
  """One query chunk against one key chunk, densely: (out [B,T,H,D] float32, lse [B,T,H] float32).

  Memory is O(T*S) per head; use `attention_with_lse` for long chunks.
  """
  out, lse = attention_with_lse(q, k, v, q_segment_ids, kv_segment_ids, scale=scale,
                                block_q=q.shape[1], block_kv=k.shape[1])
  return out, lse


def attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                       kv_segment_ids: jax.Array, *, scale: float, block_q: int = BLOCK_Q,
                       block_kv: int = BLOCK_KV,
                       out_dtype=F32) -> tuple[jax.Array, jax.Array]:
  """Attention of a query chunk over a key chunk, with its row log-sum-exp.

  q [B, T, H, D], k/v [B, S, KH, D]. Returns out [B, T, H, D] in out_dtype (softmax-normalised
  within this chunk; float32 by default, for merging) and lse [B, T, H] float32 (-inf, with
  out = 0, where a row sees no key).
  """
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = h // kh
  bq, nq = _tiling(t, block_q)
  bk, nk = _tiling(s, block_kv)
  q, q_seg = _heads_major(_pad(q, bq * nq), kh), _pad(q_segment_ids, bq * nq)
  k, v = _kv_major(_pad(k, bk * nk)), _kv_major(_pad(v, bk * nk))
  kv_seg = _pad(kv_segment_ids, bk * nk)

  def q_block(i, outputs):
    q_i, qs_i = _slice_at(q, i, bq, 3), _slice(q_seg, i, bq)

    def kv_step(j, carry):
      k_j, v_j, ks_j = _slice_at(k, j, bk, 2), _slice_at(v, j, bk, 2), _slice(kv_seg, j, bk)

      def tile(carry, visible):
        m, l, acc = carry
        logits = _logits(q_i, k_j, scale)
        if visible is not None:
          logits = jnp.where(visible, logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)   # keeps exp(-inf - -inf) out
        p = jnp.exp(logits - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        l = alpha * l + jnp.sum(p, axis=-1)
        pv = jnp.einsum('bkgqs,bksd->bkgqd', p.astype(v_j.dtype), v_j, preferred_element_type=F32)
        return m_new, l, alpha[..., None] * acc + pv

      return _run_tile(_tile_kind(qs_i, ks_j), tile, carry, qs_i, ks_j)

    m0 = jnp.full((b, kh, g, bq), -jnp.inf, F32)
    init = (m0, jnp.zeros((b, kh, g, bq), F32), jnp.zeros((b, kh, g, bq, d), F32))
    m, l, acc = jax.lax.fori_loop(0, nk, kv_step, init)
    seen = l > 0
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    out_all, lse_all = outputs
    out_all = jax.lax.dynamic_update_slice_in_dim(out_all, out.astype(out_dtype), i * bq, axis=3)
    lse_all = jax.lax.dynamic_update_slice_in_dim(lse_all, lse, i * bq, axis=3)
    return out_all, lse_all

  init = (jnp.zeros((b, kh, g, bq * nq, d), out_dtype), jnp.zeros((b, kh, g, bq * nq), F32))
  out, lse = jax.lax.fori_loop(0, nq, q_block, init)
  return _seq_major(out)[:, :t], _seq_major(lse)[:, :t]


def attention_grads(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, lse: jax.Array, delta: jax.Array, dout: jax.Array,
                    *, scale: float, block_q: int = BLOCK_Q, block_kv: int = BLOCK_KV,
                    dkv_dtype=F32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradients of one query chunk against one key chunk: (dq float32, dk, dv in dkv_dtype).

  lse [B, T, H] is the log-sum-exp of each row over *all* keys it attends (in a ring: over every
  chunk), delta [B, T, H] = sum(dout * out, -1) with `out` the final output, so the chunk pairs'
  gradients add up to the exact gradient. Rows with lse = -inf contribute nothing. Each key
  block's gradient is summed in float32 and written once, so dkv_dtype may be the keys' own
  dtype unless the caller keeps adding to it (as the ring does).
  """
  b, t, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  bq, nq = _tiling(t, block_q)
  bk, nk = _tiling(s, block_kv)

  def rows(x):   # [B, T, H] -> [B, KH, G, Tp], the layout of a tile's row statistics
    return _heads_major(_pad(x.astype(F32), bq * nq)[..., None], kh)[..., 0]

  q, do = _heads_major(_pad(q, bq * nq), kh), _heads_major(_pad(dout, bq * nq), kh)
  q_seg = _pad(q_segment_ids, bq * nq)
  lse, delta = rows(jnp.where(jnp.isfinite(lse), lse, 0.0)), rows(delta)
  k, v = _kv_major(_pad(k, bk * nk)), _kv_major(_pad(v, bk * nk))
  kv_seg = _pad(kv_segment_ids, bk * nk)

  def kv_block(j, grads):
    k_j, v_j, ks_j = _slice_at(k, j, bk, 2), _slice_at(v, j, bk, 2), _slice(kv_seg, j, bk)

    def q_step(i, carry):
      q_i, do_i, qs_i = _slice_at(q, i, bq, 3), _slice_at(do, i, bq, 3), _slice(q_seg, i, bq)
      lse_i, delta_i = _slice_at(lse, i, bq, 3), _slice_at(delta, i, bq, 3)

      def tile(carry, visible):
        dq, dk, dv = carry
        logits = _logits(q_i, k_j, scale)
        p = jnp.exp(logits - lse_i[..., None])
        if visible is not None:
          # Masked entries may overflow exp; `where` drops them, and nothing here is
          # differentiated.
          p = jnp.where(visible, p, 0.0)
        dv = dv + jnp.einsum('bkgqs,bkgqd->bksd', p.astype(do_i.dtype), do_i,
                             preferred_element_type=F32)
        dp = jnp.einsum('bkgqd,bksd->bkgqs', do_i, v_j, preferred_element_type=F32)
        ds = p * (dp - delta_i[..., None]) * scale
        dq_i = jnp.einsum('bkgqs,bksd->bkgqd', ds.astype(k_j.dtype), k_j,
                          preferred_element_type=F32)
        dq = jax.lax.dynamic_update_slice_in_dim(dq, _slice_at(dq, i, bq, 3) + dq_i, i * bq,
                                                 axis=3)
        dk = dk + jnp.einsum('bkgqs,bkgqd->bksd', ds.astype(q_i.dtype), q_i,
                             preferred_element_type=F32)
        return dq, dk, dv

      return _run_tile(_tile_kind(qs_i, ks_j), tile, carry, qs_i, ks_j)

    dq, dk_all, dv_all = grads
    zeros = jnp.zeros((b, kh, bk, d), F32)
    dq, dk, dv = jax.lax.fori_loop(0, nq, q_step, (dq, zeros, zeros))
    dk_all = jax.lax.dynamic_update_slice_in_dim(dk_all, dk.astype(dkv_dtype), j * bk, axis=2)
    dv_all = jax.lax.dynamic_update_slice_in_dim(dv_all, dv.astype(dkv_dtype), j * bk, axis=2)
    return dq, dk_all, dv_all

  init = (jnp.zeros(q.shape, F32), jnp.zeros(k.shape, dkv_dtype), jnp.zeros(v.shape, dkv_dtype))
  dq, dk, dv = jax.lax.fori_loop(0, nk, kv_block, init)
  return _seq_major(dq)[:, :t], _kv_major(dk)[:, :s], _kv_major(dv)[:, :s]


_attention = flash_vjp.differentiable(attention_with_lse, attention_grads)


def default_block_q() -> int:
  """Query rows per tile when the caller sets none: CPU_BLOCK_Q when compiling for a CPU, else
  BLOCK_Q (the platform of the ambient mesh, so a TPU plan on a CPU host gets the TPU tiles)."""
  from lladax.attention import sharded  # pylint: disable=import-outside-toplevel
  return CPU_BLOCK_Q if sharded.platform() == 'cpu' else BLOCK_Q


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, block_q: int | None = None,
              block_kv: int = BLOCK_KV) -> jax.Array:
  """The `blockwise` kernel: q [B,T,H,D], k/v [B,S,KH,D] -> [B,T,H,D] in q.dtype."""
  block_q = default_block_q() if block_q is None else block_q
  return _attention(q, k, v, q_segment_ids, kv_segment_ids, float(scale),
                    (('block_q', int(block_q)), ('block_kv', int(block_kv))))
