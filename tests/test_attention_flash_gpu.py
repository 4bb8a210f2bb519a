"""The flash_gpu kernel (Pallas Triton) against the dense reference, in interpret mode on CPU:
packed segments, padding, GQA, lengths no tile divides, cross-attention, bfloat16; inside the ring
and all_gather on 8 simulated devices; the model through it; its Triton lowering for CUDA; its
option errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lladax import model as model_lib
from lladax.attention import attention, bench, blockwise, flash_gpu, ring
from lladax.config import ConfigError
from tests.attention_layouts import layouts
from tests.helpers import replace, tiny_config
from tests.test_attention_kernels import assert_matches, compiled, operands, out_and_grads
from tests.test_attention_sharded import run_script


def test_off_gpu_it_runs_interpreted():
  assert flash_gpu.use_interpret() is True
  assert flash_gpu.use_interpret(False) is False


# Packed layouts and cross-attention against the reference: test_attention_kernels.py's flash
# kernel tests, parametrised with flash_gpu.


def test_rows_without_keys_give_zero_and_minus_infinity():
  t = 48
  q, k, v, _ = operands(13, 1, t, t, 2, 2)
  q_seg = np.array([[1] * 24 + [2] * 12 + [0] * 12], np.int32)
  kv_seg = np.array([[1] * 24 + [3] * 24], np.int32)
  out, lse = flash_gpu.attention_with_lse(q, k, v, q_seg, kv_seg, scale=0.25, block_q=16,
                                          block_kv=16)
  assert np.isneginf(np.asarray(lse[0, 24:])).all() and np.isfinite(lse[0, :24]).all()
  assert not np.asarray(out[0, 24:]).any() and np.isfinite(np.asarray(out)).all()
  want_out, want_lse = [np.asarray(x) for x in blockwise.attention_with_lse(
      q, k, v, q_seg, kv_seg, scale=0.25)]
  np.testing.assert_allclose(np.asarray(out), want_out, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse)[0, :24], want_lse[0, :24], atol=1e-5)
  # Given a cotangent on every row, gradients stay finite and vanish for the unseeing rows.
  dq, dk, dv = flash_gpu.attention_grads(q, k, v, q_seg, kv_seg, lse, np.zeros(lse.shape),
                                         np.ones_like(q), scale=0.25, block_q=16, block_kv=16)
  assert all(np.isfinite(np.asarray(g)).all() for g in (dq, dk, dv))
  assert not np.asarray(dq[0, 24:]).any() and not np.asarray(dk[0, 24:]).any()


def test_bfloat16_tracks_the_reference_and_keeps_its_dtype():
  t = 64
  q, k, v, ct = operands(14, 2, t, t, 4, 2)
  seg = next(layouts(t, 2, seed=14))[1]
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  (got, got_g), (want, want_g) = [out_and_grads(kernel, *bf, seg, seg, ct) for kernel in
                                  ('flash_gpu', 'reference')]
  np.testing.assert_allclose(got, want, atol=2e-2)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, atol=0.1)
  (_, out), grads = compiled('flash_gpu', ())(*bf, seg, seg, ct)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)


def test_ring_without_a_mesh_runs_flash_gpu_steps_on_one_device():
  t = 48
  q, k, v, ct = operands(15, 2, t, t, 4, 2)
  seg = next(layouts(t, 2, seed=15))[1]
  assert_matches('ring', q, k, v, seg, seg, ct, step_kernel='flash_gpu', block_q=16, block_kv=16)


def test_ring_and_all_gather_with_flash_gpu_on_simulated_devices():
  rows = run_script('attention_multidevice.py', 'flash_gpu')
  assert {r['check'] for r in rows} == {
      'ring with flash_gpu steps, context=4, GQA',
      'ring with flash_gpu steps, context=2 x tensor=2, one kv head',
      'all_gather with flash_gpu, fsdp=2 x context=2'}
  assert len(rows) == 9   # three layouts each
  for r in rows:
    where = f"{r['check']} on {r['layout']}"
    assert r['finite'], where
    assert r['fwd'] <= 1e-5, (where, r)
    assert max(r['dq'], r['dk'], r['dv']) <= 1e-4, (where, r)


@pytest.mark.parametrize('heads,kv_heads', [(4, 2), (6, 2)])
def test_forward_and_backward_lower_to_triton_for_cuda(heads, kv_heads):
  # No GPU here, but the Triton lowering runs on the host: it refuses what Triton cannot take
  # (tiles that are not powers of two, unsupported operations) before any GPU would see it.
  # Three query heads per key head make the dK/dV kernel's head block no power of two.
  q = jax.ShapeDtypeStruct((1, 200, heads, 128), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 200, kv_heads, 128), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((1, 200), jnp.int32)

  def loss(q, k, v, seg):
    out = attention(q, k, v, seg, kernel='flash_gpu', interpret=False, block_q=64, block_kv=32)
    return jnp.sum(out.astype(jnp.float32))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  text = grads.trace(q, kv, kv, seg).lower(lowering_platforms=('cuda',)).as_text()
  # One forward, one dQ and one dK/dV kernel, each a Triton call.
  assert text.count('__gpu$xla.gpu.triton') == 3
  for name in ('lladax_flash_fwd', 'lladax_flash_dq', 'lladax_flash_dkv'):
    assert name in text


@pytest.mark.parametrize('kernel,options,message', [
    ('flash_gpu', ('num_warps=0',), "sets num_warps=0 for the 'flash_gpu' kernel; it must be a "
                                    'positive integer'),
    ('flash_gpu', ('step_kernel=blockwise',), "the 'flash_gpu' attention kernel does not know"),
    ('ring', ('num_stages=3',), 'uses only with step_kernel=flash_gpu; add '
                                'step_kernel=flash_gpu or drop num_stages'),
    ('ring', ('interpret=True',), 'uses only with step_kernel=splash or step_kernel=flash_gpu'),
    ('all_gather', ('inner=splash', 'num_warps=4'), 'uses only with inner=flash_gpu'),
])
def test_bad_options_are_refused_in_one_sentence(kernel, options, message):
  with pytest.raises(ConfigError, match=message) as e:
    tiny_config(attention_kernel=kernel, attention_options=options)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


def test_good_options_are_accepted_and_a_zero_tile_is_refused():
  tiny_config(attention_kernel='ring',
              attention_options=('step_kernel=flash_gpu', 'block_q=64', 'num_warps=4'))
  tiny_config(attention_kernel='all_gather',
              attention_options=('inner=flash_gpu', 'interpret=True'))
  tiny_config(attention_kernel='flash_gpu', attention_options=('block_q=64', 'num_stages=3'))
  x = jnp.zeros((1, 8, 2, 16))
  seg = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match='not positive'):
    attention(x, x, x, seg, kernel='flash_gpu', block_kv=0)
  with pytest.raises(ValueError, match='Pallas step kernel'):
    ring.attention(x, x, x, seg, seg, scale=1.0, num_warps=4)


def test_attention_bench_times_it_only_on_gpu():
  b = bench.BenchConfig()
  assert 'flash_gpu' in b.kernels
  assert 'interpret' in bench.skip_reason(b, 'flash_gpu', 'cpu')
  assert bench.skip_reason(b, 'flash_gpu', 'gpu') is None
  assert bench.kernel_options(b, 'flash_gpu') == dict(block_q=128, block_kv=64)


def test_model_runs_with_the_flash_gpu_kernel():
  # Through the scanned, rematerialised block: same logits and gradients as the reference.
  cfg = tiny_config(max_sequence_length=32, remat_policy='full')
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, 60, (2, 24)), jnp.int32)
  seg = jnp.asarray(np.repeat([[1, 1, 2, 0], [1, 2, 3, 3]], 6, axis=1), jnp.int32)

  def run(kernel, options=()):
    m = model_lib.init(replace(cfg, attention_kernel=kernel, attention_options=options), seed=0)
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(tokens, segment_ids=seg) ** 2)))(m)
    return loss, grads.blocks.q_proj[...]

  (want, want_g), (got, got_g) = run('reference'), run('flash_gpu', ('block_q=16', 'block_kv=16'))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), atol=1e-4, rtol=1e-4)
