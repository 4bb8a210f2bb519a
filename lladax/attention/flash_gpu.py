"""Flash attention for NVIDIA GPUs in Pallas (Triton), bidirectional, with segment ids.

Three pallas_calls, flash-attention-2 style: a forward over (query block, batch, head) that walks
the key blocks with an online softmax and writes the output and the row log-sum-exp; a dQ kernel
over the same grid; a dK/dV kernel over (key block, batch, key head) that walks the query
blocks.
Probabilities are never stored: the backward recomputes each tile from q, k and the saved lse.
Logits, softmax statistics and every accumulator are float32; the matmuls take the inputs'
dtype (bfloat16 or float32) with float32 accumulation.

A tile is skipped when the ranges of its query and key segment ids cannot meet (many short
packed documents, padding); inside a tile the exact mask is applied. A row that sees no key
(padding, or no key of its segment in this chunk) gets out = 0 and lse = -inf, and no gradient.

Grouped-query attention reads key head h // G for query head h; the dK/dV kernel runs per key
head and sums its G query heads' contributions in float32 before writing.

Triton wants power-of-two tiles of at least 16: block sizes are rounded up to one (and clamped
to the padded length), the head dimension is padded to one, and the lengths are padded to whole
tiles with segment 0, which nothing attends. Off GPU the same kernels run in Pallas interpret
mode (slow; for tests), chosen from the platform being compiled for or forced by `interpret`.

`attention_with_lse` / `attention_grads` have the interfaces of blockwise's, and `ring_steps`
hands them to the ring as its per-step kernel.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lladax.attention import flash_vjp, sharded

F32 = jnp.float32
BLOCK_Q = 128    # query rows per tile
BLOCK_KV = 64    # keys per tile
MIN_BLOCK = 16   # Triton's smallest matmul side
GPU_PLATFORMS = ('gpu', 'cuda', 'rocm')
_NO_SEGMENT = 2 ** 30   # above every real segment id: the minimum of an all-padding block


def _pallas():
  """Pallas and its Triton parameters, imported on first use so `import lladax` never needs them."""
  # pylint: disable=import-outside-toplevel
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  return pl, plgpu


def use_interpret(interpret: bool | None = None) -> bool:
  """Interpret mode unless compiling for a GPU; `interpret` overrides."""
  if interpret is not None:
    return bool(interpret)
  return sharded.platform() not in GPU_PLATFORMS


def _pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _block(block: int, length: int) -> int:
  if block <= 0:
    raise ValueError(f'flash_gpu tile size {block} is not positive; pass block_q and block_kv of '
                     'at least 16 (powers of two; 128 and 64 are the defaults).')
  return max(MIN_BLOCK, min(_pow2(block), _pow2(length)))


def _pad(x: jax.Array, length: int, axis: int) -> jax.Array:
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths)   # zeros: segment 0 is padding, zero head dims change no dot product


# --- the kernels (one batch row and head each; refs are [length, head_dim] or [length]) ---

def _dot(a, b, contract=(1, 1)):
  """a @ b.T by default; float32 accumulation whatever the inputs' dtype."""
  return jax.lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())),
                             preferred_element_type=F32)


def _span(seg):
  """(lowest nonzero id, highest id) of a block of segment ids; (big, 0) for all padding."""
  return jnp.min(jnp.where(seg == 0, _NO_SEGMENT, seg)), jnp.max(seg)


def _may_meet(q_span, k_span):
  """False only when no query of one block can share a segment with a key of the other."""
  return (q_span[0] <= k_span[1]) & (k_span[0] <= q_span[1])


def _visible(qs, ks):
  return (qs[:, None] == ks[None, :]) & (ks[None, :] != 0)


def _fwd_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, *, scale, block_kv, n_kv):
  q, qs = q_ref[...], qs_ref[...]
  q_span = _span(qs)

  def kv_step(j, carry):
    rows = _tile(j, block_kv)
    ks = ks_ref[rows]

    def tile(carry):
      m, l, acc = carry
      logits = jnp.where(_visible(qs, ks), _dot(q, k_ref[rows, :]) * scale, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(logits, axis=1))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)   # keeps exp(-inf - -inf) out
      p = jnp.exp(logits - m_safe[:, None])
      alpha = jnp.exp(m - m_safe)
      v = v_ref[rows, :]
      acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, (1, 0))
      return m_new, alpha * l + jnp.sum(p, axis=1), acc

    return jax.lax.cond(_may_meet(q_span, _span(ks)), tile, lambda c: c, carry)

  bq, d = q.shape
  init = (jnp.full((bq,), -jnp.inf, F32), jnp.zeros((bq,), F32), jnp.zeros((bq, d), F32))
  m, l, acc = jax.lax.fori_loop(0, n_kv, kv_step, init)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)


def _probs(q, k, qs, ks, lse, scale):
  """Softmax probabilities of one tile from the row lse; 0 where masked (no overflow on the way)."""
  logits = _dot(q, k) * scale - lse[:, None]
  return jnp.exp(jnp.where(_visible(qs, ks), logits, -jnp.inf))


def _dq_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale,
               block_kv, n_kv):
  q, qs, do = q_ref[...], qs_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_span = _span(qs)

  def kv_step(j, dq):
    rows = _tile(j, block_kv)
    ks = ks_ref[rows]

    def tile(dq):
      k = k_ref[rows, :]
      p = _probs(q, k, qs, ks, lse, scale)
      ds = p * (_dot(do, v_ref[rows, :]) - delta[:, None])
      return dq + _dot(ds.astype(k.dtype), k, (1, 0))

    return jax.lax.cond(_may_meet(q_span, _span(ks)), tile, lambda c: c, dq)

  dq = jax.lax.fori_loop(0, n_kv, kv_step, jnp.zeros(q.shape, F32))
  dq_ref[...] = dq * scale


def _dkv_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                scale, block_q, n_q, group):
  """One key head's block: q, do refs hold its `group` query heads ([Tp, G, Dp]; lse [G, Tp])."""
  k, v, ks = k_ref[...], v_ref[...], ks_ref[...]
  k_span = _span(ks)

  def q_step(i, carry):
    rows = _tile(i, block_q)
    qs = qs_ref[rows]

    def tile(carry):
      dk, dv = carry
      for g in range(group):   # the query heads sharing this key head, summed here
        q, do = q_ref[rows, g, :], do_ref[rows, g, :]
        p = _probs(q, k, qs, ks, lse_ref[g, rows], scale)            # [bq, bk]
        dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
        ds = p * (_dot(do, v) - delta_ref[g, rows][:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, (0, 0))
      return dk, dv

    return jax.lax.cond(_may_meet(_span(qs), k_span), tile, lambda c: c, carry)

  zeros = jnp.zeros(k.shape, F32)
  dk, dv = jax.lax.fori_loop(0, n_q, q_step, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _tile(i, block: int):
  """Tile i of `block` rows of a ref (the multiple_of hint lets Triton vectorise the loads)."""
  pl, _ = _pallas()
  return pl.ds(pl.multiple_of(i * block, block), block)


# --- the calls ---------------------------------------------------------------------------------

class _Tiled:
  """Operands padded to whole power-of-two tiles, with the grid facts the calls share."""

  def __init__(self, q, k, v, q_seg, kv_seg, block_q, block_kv):
    self.b, self.t, self.h, self.d = q.shape
    self.s, self.kh = k.shape[1], k.shape[2]
    self.group = self.h // self.kh
    self.bq, self.bk = _block(block_q, self.t), _block(block_kv, self.s)
    self.tp = -(-self.t // self.bq) * self.bq
    self.sp = -(-self.s // self.bk) * self.bk
    self.dp = max(MIN_BLOCK, _pow2(self.d))
    self.q = self.rows(q, self.tp)
    self.k, self.v = self.rows(k, self.sp), self.rows(v, self.sp)
    self.q_seg = _pad(q_seg.astype(jnp.int32), self.tp, 1)
    self.kv_seg = _pad(kv_seg.astype(jnp.int32), self.sp, 1)

  def rows(self, x, length):
    """[B, L, heads, D] padded to [B, length, heads, Dp]."""
    return _pad(_pad(x, length, 1), self.dp, 3)

  def stats(self, x):
    """Row statistics [B, T, H] -> [B, H, Tp] float32, the layout the kernels read."""
    return jnp.swapaxes(_pad(x.astype(F32), self.tp, 1), 1, 2)

  # BlockSpecs over the grid (block index, batch row, query head); None squeezes a dimension.
  def block(self, length, heads_of=None):
    pl, _ = _pallas()
    head = heads_of or (lambda h: h)
    return pl.BlockSpec((None, length, None, self.dp), lambda i, b, h: (b, i, head(h), 0))

  def whole(self, length, heads_of=None):
    pl, _ = _pallas()
    head = heads_of or (lambda h: h)
    return pl.BlockSpec((None, length, None, self.dp), lambda i, b, h: (b, 0, head(h), 0))

  def kv_head(self, h):
    return h // self.group

  @staticmethod
  def seg_block(length):
    return _pallas()[0].BlockSpec((None, length), lambda i, b, h: (b, i))

  @staticmethod
  def seg_whole(length):
    return _pallas()[0].BlockSpec((None, length), lambda i, b, h: (b, 0))

  @staticmethod
  def stat_block(length):
    return _pallas()[0].BlockSpec((None, None, length), lambda i, b, h: (b, h, i))


def _call(kernel, grid, in_specs, out_specs, out_shape, settings, name):
  pl, plgpu = _pallas()
  interpret, num_warps, num_stages = settings
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpret, name=name,
                        compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                                             num_stages=num_stages))


def _settings(interpret, num_warps, num_stages, head_dim):
  warps = num_warps or (4 if head_dim <= 64 else 8)
  return use_interpret(interpret), warps, num_stages


def attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                       kv_segment_ids: jax.Array, *, scale: float, block_q: int = BLOCK_Q,
                       block_kv: int = BLOCK_KV, interpret: bool | None = None,
                       num_warps: int = 0, num_stages: int = 2,
                       out_dtype=F32) -> tuple[jax.Array, jax.Array]:
  """Attention of a query chunk over a key chunk, with its row log-sum-exp.

  q [B, T, H, D], k/v [B, S, KH, D]. Returns out [B, T, H, D] in out_dtype (softmax-normalised
  within this chunk) and lse [B, T, H] float32 (-inf, with out = 0, where a row sees no key).
  num_warps 0 picks 4 for head_dim <= 64, else 8.
  """
  x = _Tiled(q, k, v, q_segment_ids, kv_segment_ids, block_q, block_kv)
  settings = _settings(interpret, num_warps, num_stages, x.dp)
  kernel = functools.partial(_fwd_kernel, scale=float(scale), block_kv=x.bk, n_kv=x.sp // x.bk)
  out_shape = [jax.ShapeDtypeStruct((x.b, x.tp, x.h, x.dp), out_dtype),
               jax.ShapeDtypeStruct((x.b, x.h, x.tp), F32)]
  out, lse = _call(
      kernel, (x.tp // x.bq, x.b, x.h),
      [x.block(x.bq), x.whole(x.sp, x.kv_head), x.whole(x.sp, x.kv_head),
       x.seg_block(x.bq), x.seg_whole(x.sp)],
      [x.block(x.bq), x.stat_block(x.bq)], out_shape, settings, 'lladax_flash_fwd',
  )(x.q, x.k, x.v, x.q_seg, x.kv_seg)
  return out[:, :x.t, :, :x.d], jnp.swapaxes(lse, 1, 2)[:, :x.t]


def attention_grads(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, lse: jax.Array, delta: jax.Array, dout: jax.Array,
                    *, scale: float, block_q: int = BLOCK_Q, block_kv: int = BLOCK_KV,
                    interpret: bool | None = None, num_warps: int = 0, num_stages: int = 2,
                    dkv_dtype=F32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradients of one query chunk against one key chunk: (dq float32, dk, dv in dkv_dtype).

  lse [B, T, H] is each row's log-sum-exp over all the keys it attends (in a ring: the merged
  one), delta [B, T, H] = sum(dout * out, -1) with `out` the final output; rows with lse = -inf
  contribute nothing. Same contract as blockwise.attention_grads.
  """
  x = _Tiled(q, k, v, q_segment_ids, kv_segment_ids, block_q, block_kv)
  settings = _settings(interpret, num_warps, num_stages, x.dp)
  do = x.rows(dout.astype(q.dtype), x.tp)
  lse = x.stats(jnp.where(jnp.isfinite(lse), lse, 0.0))
  delta = x.stats(delta)
  args = (x.q, x.k, x.v, x.q_seg, x.kv_seg, do, lse, delta)
  dq = _call(
      functools.partial(_dq_kernel, scale=float(scale), block_kv=x.bk, n_kv=x.sp // x.bk),
      (x.tp // x.bq, x.b, x.h),
      [x.block(x.bq), x.whole(x.sp, x.kv_head), x.whole(x.sp, x.kv_head), x.seg_block(x.bq),
       x.seg_whole(x.sp), x.block(x.bq), x.stat_block(x.bq), x.stat_block(x.bq)],
      x.block(x.bq), jax.ShapeDtypeStruct(x.q.shape, F32), settings, 'lladax_flash_dq',
  )(*args)
  # Grid over key heads: each program reads its group of G query heads whole, so dK/dV are
  # summed over the group in float32 inside the kernel and written once, in dkv_dtype.
  pl, _ = _pallas()
  group = pl.BlockSpec((None, x.tp, x.group, x.dp), lambda j, b, h: (b, 0, h, 0))
  group_stats = pl.BlockSpec((None, x.group, x.tp), lambda j, b, h: (b, h, 0))
  dkv_shape = jax.ShapeDtypeStruct(x.k.shape, dkv_dtype)
  dk, dv = _call(
      functools.partial(_dkv_kernel, scale=float(scale), block_q=x.bq, n_q=x.tp // x.bq,
                        group=x.group),
      (x.sp // x.bk, x.b, x.kh),
      [group, x.block(x.bk), x.block(x.bk), x.seg_whole(x.tp), x.seg_block(x.bk), group,
       group_stats, group_stats],
      [x.block(x.bk), x.block(x.bk)], [dkv_shape, dkv_shape], settings, 'lladax_flash_dkv',
  )(*args)
  return dq[:, :x.t, :, :x.d], dk[:, :x.s, :, :x.d], dv[:, :x.s, :, :x.d]


_attention = flash_vjp.differentiable(attention_with_lse, attention_grads)


def _frozen(block_q, block_kv, interpret, num_warps, num_stages):
  """The kernel settings as a hashable tuple (a nondiff argument of the custom VJP)."""
  return (('block_q', int(block_q)), ('block_kv', int(block_kv)),
          ('interpret', use_interpret(interpret)), ('num_warps', int(num_warps)),
          ('num_stages', int(num_stages)))


def attention_local(q, k, v, q_segment_ids, kv_segment_ids, *, scale: float,
                    block_q: int = BLOCK_Q, block_kv: int = BLOCK_KV,
                    interpret: bool | None = None, num_warps: int = 0,
                    num_stages: int = 2) -> jax.Array:
  """flash_gpu on unsharded operands (one device, or one shard inside a shard_map)."""
  settings = _frozen(block_q, block_kv, interpret, num_warps, num_stages)
  return _attention(q, k, v, q_segment_ids, kv_segment_ids, float(scale), settings)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, **options) -> jax.Array:
  """The `flash_gpu` kernel: q [B,T,H,D], k/v [B,S,KH,D] -> [B,T,H,D] in q.dtype.

  Under a mesh it runs per shard inside jax.shard_map (a pallas_call cannot be split by XLA),
  with keys and values gathered over `context`; use the ring with step_kernel=flash_gpu to keep
  them split. options: block_q, block_kv, interpret, num_warps, num_stages.
  """
  # Decided here, outside any shard_map, from the platform being compiled for.
  options = {**options, 'interpret': use_interpret(options.get('interpret'))}
  local = functools.partial(attention_local, scale=scale, **options)
  lay = sharded.layout(q, k)
  if lay is None:
    return local(q, k, v, q_segment_ids, kv_segment_ids)
  return sharded.shard_attention(local, lay, q, k, v, q_segment_ids, kv_segment_ids,
                                 gather_kv=True)


def ring_steps(*, scale: float, block_q: int = BLOCK_Q, block_kv: int = BLOCK_KV,
               interpret: bool | None = None, num_warps: int = 0, num_stages: int = 2):
  """(step_fwd, step_bwd) for lladax.attention.ring (see ring.ring_shard) built on these kernels."""
  settings = dict(_frozen(block_q, block_kv, interpret, num_warps, num_stages))

  def step_fwd(q, k, v, q_seg, kv_seg):
    return attention_with_lse(q, k, v, q_seg, kv_seg, scale=scale, **settings)

  def step_bwd(q, k, v, q_seg, kv_seg, out, lse, delta, dout):
    del out
    return attention_grads(q, k, v, q_seg, kv_seg, lse, delta, dout, scale=scale, **settings)

  return step_fwd, step_bwd
