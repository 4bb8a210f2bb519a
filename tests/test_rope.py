import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import rope
from lladax.config import ConfigError
from lladax.model_config import ModelConfig, RopeConfig, resolve_rope
from tests.helpers import np_rope

LLADA = dict(base=500000.0, head_dim=128, train_length=4096)


@pytest.mark.parametrize('target,want', [(8192, 4), (16384, 14), (24576, 31), (32768, 55)])
def test_longllada_lambdas(target, want):
  # LongLLaDA's published scaling factors for LLaDA-8B.
  lam = rope.ntk_lambda(500000.0, 128, 4096, target, round_up=True)
  assert lam == want


def test_longllada_unrounded_lambdas_match_the_formula_table():
  got = [rope.ntk_lambda(500000.0, 128, 4096, t) for t in (8192, 16384, 32768)]
  np.testing.assert_allclose(got, [3.40, 13.60, 54.40], atol=0.01)


def test_critical_dimensions():
  assert rope.critical_dim(500000.0, 128, 4096) == 64
  assert rope.critical_dim(500000.0, 128, 2 * 4096) == 70


def test_diffusion_aware_base_at_128k():
  params = rope.resolve('diffusion_ntk', target_length=131072, **LLADA)
  assert params.theta == pytest.approx(2.81e8, rel=0.005)
  assert params.theta / 500000.0 == pytest.approx(562, rel=0.002)


def test_diffusion_aware_table_and_dcrit_override():
  lam = lambda t, d=None: rope.resolve('diffusion_ntk', target_length=t, d_crit=d,
                                       **LLADA).theta / 5e5
  np.testing.assert_allclose([lam(8192), lam(16384), lam(32768), lam(65536)],
                             [3.53, 12.5, 44.5, 158], rtol=0.01)
  # UltraLLaDA's empirically better d_crit = 73 gives lambda' ~ 253 at 128K.
  assert lam(131072, 73) == pytest.approx(253, rel=0.01)


@pytest.mark.parametrize('target,want', [(16384, 4), (32768, 13)])
def test_llama3_lambdas(target, want):
  assert rope.ntk_lambda(500000.0, 128, 8192, target, round_up=True) == want


def test_linear_and_theta_rules():
  lin = rope.resolve('linear', target_length=16384, **LLADA)
  assert lin.theta == 500000.0 and lin.position_scale == 0.25
  assert rope.resolve('theta', theta=1e7, **LLADA).theta == 1e7
  assert rope.resolve('none', **LLADA) == rope.RopeParams(500000.0, 1.0)


def test_rotation_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 3, 16)).astype(np.float32)
  pos = rng.integers(0, 5000, size=(2, 7))
  got = rope.apply(jnp.asarray(x), jnp.asarray(pos), rope.RopeParams(500000.0))
  np.testing.assert_allclose(np.asarray(got), np_rope(x, pos, 500000.0), atol=2e-4)


def test_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 64)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 64)), jnp.float32)
  params = rope.RopeParams(10000.0)

  def score(m, n):
    qr = rope.apply(q, jnp.array([[m]]), params)
    kr = rope.apply(k, jnp.array([[n]]), params)
    return float(jnp.sum(qr * kr))

  base = score(10, 3)
  for shift in (0, 5, 100, 1000):
    assert score(10 + shift, 3 + shift) == pytest.approx(base, abs=1e-3)
  assert abs(score(10, 3) - score(3, 10)) > 1e-3  # direction matters


def test_rotation_is_float32_inside_and_returns_input_dtype():
  x = jnp.ones((1, 4, 1, 8), jnp.bfloat16)
  out = rope.apply(x, jnp.arange(4)[None], rope.RopeParams(10000.0))
  assert out.dtype == jnp.bfloat16


def test_resolve_rope_applies_rule_to_model_config():
  cfg = resolve_rope(ModelConfig(), RopeConfig(rule='ntk', target_length=32768,
                                               round_lambda=True))
  assert cfg.rope_theta == 55 * 500000.0


def test_rope_config_errors():
  with pytest.raises(ConfigError, match='target_length'):
    RopeConfig(rule='ntk')
  with pytest.raises(ConfigError, match='rule'):
    RopeConfig(rule='yarn')
  with pytest.raises(ConfigError, match='theta'):
    RopeConfig(rule='theta')
