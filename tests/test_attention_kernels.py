"""The blockwise and splash kernels against the dense reference on one device (sharded runs are in
test_attention_sharded.py): packed layouts, GQA, cross-attention, ragged lengths, empty rows."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lladax import model as model_lib
from lladax.attention import KERNELS, attention, blockwise, ring, splash
from tests.attention_layouts import layouts
from tests.helpers import replace, tiny_config

D = 16


def operands(seed, b, t, s, h, kh, dtype=np.float32):
  rng = np.random.default_rng(seed)
  shapes = [(b, t, h, D), (b, s, kh, D), (b, s, kh, D), (b, t, h, D)]
  return [rng.normal(size=x).astype(dtype) for x in shapes]


@functools.lru_cache(maxsize=None)
def compiled(kernel, options):
  """One jitted (out, grads) function per kernel and options, reused across layouts."""
  def loss(q, k, v, q_seg, kv_seg, ct):
    out = attention(q, k, v, q_seg, kv_seg, kernel=kernel, **dict(options))
    return jnp.sum(out.astype(jnp.float32) * ct), out
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def out_and_grads(kernel, q, k, v, q_seg, kv_seg, ct, **options):
  (_, out), grads = compiled(kernel, tuple(sorted(options.items())))(q, k, v, q_seg, kv_seg, ct)
  return np.asarray(out, np.float32), [np.asarray(g, np.float32) for g in grads]


def assert_matches(kernel, q, k, v, q_seg, kv_seg, ct, fwd=1e-5, grad=1e-4, **options):
  want_out, want_grads = out_and_grads('reference', q, k, v, q_seg, kv_seg, ct)
  got_out, got_grads = out_and_grads(kernel, q, k, v, q_seg, kv_seg, ct, **options)
  assert np.isfinite(got_out).all() and all(np.isfinite(g).all() for g in got_grads)
  np.testing.assert_allclose(got_out, want_out, atol=fwd, rtol=0)
  for name, got, want in zip('qkv', got_grads, want_grads):
    np.testing.assert_allclose(got, want, atol=grad, rtol=0, err_msg=f'd{name}')


def test_every_kernel_is_registered():
  assert {'reference', 'blockwise', 'ring', 'all_gather', 'splash'} <= set(KERNELS)


# flash_gpu runs interpreted here (slow), so on shorter rows. No length is a whole number of
# tiles in both directions (flash_gpu rounds 24 up to 32): the last tiles are part padding.
@pytest.mark.parametrize('kernel,t,layouts_n,seed,block_q,block_kv,kh', [
    ('blockwise', 120, 4, 0, 16, 32, 4), ('blockwise', 120, 4, 0, 24, 40, 2),
    ('blockwise', 120, 4, 0, 512, 512, 1),
    ('flash_gpu', 72, 3, 10, 16, 32, 2), ('flash_gpu', 72, 3, 10, 24, 16, 4)])
def test_flash_kernels_match_reference_on_packed_layouts(kernel, t, layouts_n, seed, block_q,
                                                         block_kv, kh):
  q, k, v, ct = operands(seed, 2, t, t, 4, kh)
  for _, seg in layouts(t, layouts_n, seed=seed + 1):
    assert_matches(kernel, q, k, v, seg, seg, ct, block_q=block_q, block_kv=block_kv)


@pytest.mark.parametrize('kernel,t,s,seed,block_q,block_kv', [
    ('blockwise', 48, 80, 1, 16, 32), ('flash_gpu', 40, 55, 12, 16, 16)])
def test_flash_kernels_cross_attention_with_absent_segments(kernel, t, s, seed, block_q,
                                                            block_kv):
  # Keys hold segments 1 and 3 only: queries of segment 2 (and padding) see nothing at all.
  q, k, v, ct = operands(seed, 2, t, s, 4, 1)
  q_seg = np.repeat(np.array([[1, 2, 3, 0], [2, 2, 1, 1]], np.int32), t // 4, axis=1)
  kv_seg = np.repeat(np.array([[3, 1, 0, 3, 1], [1, 3, 3, 0, 0]], np.int32), s // 5, axis=1)
  assert_matches(kernel, q, k, v, q_seg, kv_seg, ct, block_q=block_q, block_kv=block_kv)


def test_rows_without_keys_give_zero_and_minus_infinity():
  t = 64
  q, k, v, _ = operands(2, 1, t, t, 2, 2)
  q_seg = np.array([[1] * 32 + [2] * 16 + [0] * 16], np.int32)
  kv_seg = np.array([[1] * 32 + [3] * 32], np.int32)
  for fn in (lambda *a: blockwise.attention_with_lse(*a, scale=0.25, block_q=16, block_kv=16),
             lambda *a: blockwise.block_attention(*a, scale=0.25)):
    out, lse = fn(q, k, v, q_seg, kv_seg)
    assert np.isneginf(np.asarray(lse[0, 32:])).all() and np.isfinite(lse[0, :32]).all()
    assert not np.asarray(out[0, 32:]).any() and np.isfinite(np.asarray(out)).all()
  # Their gradients, given a cotangent on every row, are finite and vanish for those rows.
  lse = blockwise.attention_with_lse(q, k, v, q_seg, kv_seg, scale=0.25)[1]
  dout = np.ones_like(q)
  dq, dk, dv = blockwise.attention_grads(q, k, v, q_seg, kv_seg, lse, np.zeros(lse.shape), dout,
                                         scale=0.25, block_q=16, block_kv=16)
  assert all(np.isfinite(np.asarray(g)).all() for g in (dq, dk, dv))
  assert not np.asarray(dq[0, 32:]).any() and not np.asarray(dk[0, 32:]).any()


def test_ring_and_all_gather_without_a_mesh_fall_back_to_one_device():
  t = 64
  q, k, v, ct = operands(3, 2, t, t, 4, 2)
  seg = next(layouts(t, 2, seed=3))[1]
  assert_matches('ring', q, k, v, seg, seg, ct, block_q=16, block_kv=16)
  assert_matches('all_gather', q, k, v, seg, seg, ct, block_q=32, block_kv=16)


def test_splash_interpret_matches_reference():
  # 200 tokens pad up to two 128-wide tiles; GQA; cross-attention where segment 3 has no keys.
  t = 200
  q, k, v, ct = operands(4, 2, t, t, 4, 2)
  q_seg = np.stack([np.repeat([1, 2, 3, 0], 50), np.repeat([2, 1, 1, 1], 50)]).astype(np.int32)
  kv_seg = np.stack([np.repeat([2, 1, 0, 0], 50), np.repeat([1, 1, 2, 0], 50)]).astype(np.int32)
  assert splash.use_interpret() is True   # no TPU here
  assert_matches('splash', q, k, v, q_seg, kv_seg, ct, block_q=128, block_kv=128)


def test_blockwise_in_bfloat16_tracks_the_reference():
  t = 96
  q, k, v, ct = operands(5, 2, t, t, 4, 4)
  seg = next(layouts(t, 2, seed=5))[1]
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  (got, got_g), (want, want_g) = [out_and_grads(kernel, *bf, seg, seg, ct) for kernel in
                                  ('blockwise', 'reference')]
  np.testing.assert_allclose(got, want, atol=2e-2)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, atol=0.1)
  (_, out), grads = compiled('blockwise', ())(*bf, seg, seg, ct)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)


def test_model_runs_with_the_blockwise_kernel():
  # Through the scanned, rematerialised block: same logits and gradients as the reference.
  cfg = tiny_config(max_sequence_length=32, remat_policy='full')
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, 60, (2, 24)), jnp.int32)
  seg = jnp.asarray(np.repeat([[1, 1, 2, 0], [1, 2, 3, 3]], 6, axis=1), jnp.int32)

  def run(kernel):
    m = model_lib.init(replace(cfg, attention_kernel=kernel), seed=0)
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(tokens, segment_ids=seg) ** 2)))(m)
    return loss, grads.blocks.q_proj[...]

  (want, want_g), (got, got_g) = run('reference'), run('blockwise')
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), atol=1e-4, rtol=1e-4)


def test_bad_options_are_refused_with_the_fix():
  x = jnp.zeros((1, 8, 2, D))
  seg = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match='step kernel'):
    ring.attention(x, x, x, seg, seg, scale=1.0, step_kernel='flash')
  with pytest.raises(ValueError, match='not positive'):
    attention(x, x, x, seg, kernel='blockwise', block_q=0)
  with pytest.raises(TypeError):
    attention(x, x, x, seg, kernel='blockwise', block_size=8)
