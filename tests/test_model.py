import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lladax import model as model_lib
from lladax.attention import attention
from lladax.config import ConfigError
from lladax.model_config import ModelConfig
from tests.helpers import np_attention, np_block, np_rms_norm, replace, tiny_config


def block_params(m, layer):
  return {n: np.asarray(getattr(m.blocks, n)[...][layer], np.float64)
          for n in model_lib.BLOCK_PARAMS}


def test_rms_norm_matches_reference_and_casts_before_weight():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 16)).astype(np.float32)
  w = rng.normal(size=(16,)).astype(np.float32)
  got = model_lib.rms_norm(jnp.asarray(x), jnp.asarray(w), 1e-5)
  np.testing.assert_allclose(np.asarray(got), np_rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-6)
  # bf16: normalise in f32, round to bf16, then multiply by the bf16 weight (LLaDA's order).
  xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  x32 = np.asarray(xb, np.float32)
  normed = x32 / np.sqrt(np.mean(x32 * x32, -1, keepdims=True) + 1e-5)
  want = jnp.asarray(normed, jnp.bfloat16) * wb
  np.testing.assert_array_equal(np.asarray(model_lib.rms_norm(xb, wb, 1e-5), np.float32),
                                np.asarray(want, np.float32))


@pytest.mark.parametrize('n_kv_heads', [None, 2])
def test_block_matches_numpy_reference(n_kv_heads):
  cfg = tiny_config(n_kv_heads=n_kv_heads)
  m = model_lib.init(cfg, seed=3)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, cfg.d_model)).astype(np.float32)
  pos = np.stack([np.arange(9), np.array([0, 1, 2, 0, 1, 2, 3, 0, 0])])
  seg = np.stack([np.ones(9, int), np.array([1, 1, 1, 2, 2, 2, 2, 3, 0])])
  p = {n: getattr(m.blocks, n)[...][0] for n in model_lib.BLOCK_PARAMS}
  got = model_lib.block(p, jnp.asarray(x), jnp.asarray(pos), jnp.asarray(seg), cfg)
  want = np_block(block_params(m, 0), x.astype(np.float64), pos, seg, cfg)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_whole_model_matches_numpy_reference():
  cfg = tiny_config()
  m = model_lib.init(cfg, seed=0)
  tokens = np.array([[5, 9, 3, 66, 12, 7]])
  pos = np.arange(6)[None]
  seg = np.ones((1, 6), int)
  x = np.asarray(m.wte[...], np.float64)[tokens]
  for layer in range(cfg.n_layers):
    x = np_block(block_params(m, layer), x, pos, seg, cfg)
  want = np_rms_norm(x, np.asarray(m.ln_f[...]), cfg.rms_norm_eps) @ np.asarray(m.lm_head[...])
  np.testing.assert_allclose(np.asarray(m(jnp.asarray(tokens))), want, atol=1e-4)


def test_attention_is_bidirectional():
  cfg = tiny_config()
  m = model_lib.init(cfg)
  tokens = jnp.array([[3, 4, 5, 6, 7, 8]])
  changed = tokens.at[0, 5].set(20)
  diff = jnp.abs(m(tokens) - m(changed))[0, :5]
  assert float(diff.max()) > 1e-4  # earlier positions see a later token


def test_documents_never_see_each_other_and_padding_changes_nothing():
  cfg = tiny_config()
  m = model_lib.init(cfg)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 0, 0]])
  tokens = jnp.array([[3, 4, 5, 6, 7, 8, 65, 65]])
  base = m(tokens, pos, seg)
  other_doc = m(tokens.at[0, 4].set(30), pos, seg)
  np.testing.assert_array_equal(np.asarray(base[0, :3]), np.asarray(other_doc[0, :3]))
  assert float(jnp.abs(base[0, 3:6] - other_doc[0, 3:6]).max()) > 1e-4
  other_pad = m(tokens.at[0, 6:].set(jnp.array([11, 40])), pos, seg)
  np.testing.assert_array_equal(np.asarray(base[0, :6]), np.asarray(other_pad[0, :6]))
  # A document gives the same logits alone as when packed beside another.
  alone = m(tokens[:, :3], pos[:, :3], seg[:, :3])
  np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(base[0, :3]), atol=1e-5)


def test_attention_rows_without_keys_are_zero_not_nan():
  q = jnp.ones((1, 3, 2, 4))
  seg = jnp.array([[1, 0, 0]])
  out = attention(q, q, q, seg)
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(np.asarray(out[0, 1:]), 0.0)


def test_reference_attention_matches_loop_reference_with_gqa():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(2, 6, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
  v = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
  seg = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0]])
  got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg))
  np.testing.assert_allclose(np.asarray(got), np_attention(q, k, v, seg), atol=1e-5)


def test_scan_unrolled_and_remat_policies_agree():
  cfg = tiny_config(n_layers=3)
  tokens = jnp.array([[1, 2, 66, 4, 5, 6]])
  ref = model_lib.init(cfg, seed=1)
  want = ref(tokens)

  def grads(c):
    m = model_lib.init(c, seed=1)
    gdef, params = nnx.split(m, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(gdef, p)(tokens) ** 2)
    return jax.grad(loss)(params)

  want_grads = grads(cfg)
  for c in [replace(cfg, scan_layers=False)] + [
      replace(cfg, remat_policy=p) for p in ('full', 'minimal', 'save_qkv_proj',
                                             'save_qkv_context', 'save_attention',
                                             'save_qkv_attention')]:
    np.testing.assert_allclose(np.asarray(model_lib.init(c, seed=1)(tokens)), np.asarray(want),
                               atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads(c), want_grads)


def test_every_parameter_has_logical_axes_of_its_rank():
  m = model_lib.init(tiny_config())
  params = nnx.state(m, nnx.Param)
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert len(leaves) == 12
  for var in leaves:
    assert len(var.logical_axes) == var[...].ndim
  assert m.blocks.q_proj.logical_axes == ('layers', 'embed', 'heads', 'head_dim')


def test_weight_tying_drops_the_head_and_uses_the_embedding():
  cfg = tiny_config(weight_tying=True)
  m = model_lib.init(cfg)
  assert not hasattr(m, 'lm_head')
  h = m.hidden(jnp.array([[1, 2, 3]]))
  np.testing.assert_allclose(np.asarray(m.logits(h)), np.asarray(h @ m.wte[...].T), atol=1e-5)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert n == cfg.num_params()


def test_bfloat16_compute_stays_close_to_float32():
  cfg = tiny_config()
  tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
  f32 = model_lib.init(cfg)(tokens)
  bf16 = model_lib.init(replace(cfg, dtype='bfloat16'))(tokens)
  assert bf16.dtype == jnp.float32  # logits are projected with float32 accumulation
  assert float(jnp.abs(f32 - bf16).max()) < 0.1


@pytest.mark.parametrize('kw,match', [
    (dict(d_model=30), 'divisible'),
    (dict(n_kv_heads=3), 'multiple'),
    (dict(mask_token_id=500), 'outside the vocabulary'),
    (dict(mask_token_id=65), 'pad_token_id'),
    (dict(remat_policy='some'), 'remat_policy'),
    (dict(attention_kernel='flash9'), 'attention_kernel'),
    (dict(dtype='float8'), 'dtype'),
])
def test_model_config_errors_name_the_setting(kw, match):
  with pytest.raises(ConfigError, match=match):
    tiny_config(**kw)


def test_llada_8b_parameter_count():
  assert ModelConfig().num_params() == 8_015_581_184


def test_recipes_choose_the_attention_kernel_and_its_options():
  tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0, 0]])
  fast = model_lib.init(tiny_config(attention_kernel='blockwise',
                                    attention_options=('block_q=4', 'block_kv=4')))
  assert fast.cfg.attention_kwargs == {'block_q': 4, 'block_kv': 4}
  np.testing.assert_allclose(np.asarray(fast(tokens, segment_ids=seg)),
                             np.asarray(model_lib.init(tiny_config())(tokens, segment_ids=seg)),
                             atol=1e-5)
  with pytest.raises(ConfigError, match="not 'name=value'"):
    tiny_config(attention_options=('block_q',))
