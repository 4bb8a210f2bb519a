"""The update's memory knobs (microbatches, loss chunks) leave the maths unchanged; shardings of
optimizer state follow the parameters. One device; the multi-device checks are in
test_sharding_devices.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import tiny_config
from jax.sharding import PartitionSpec as P

from lladax import diffusion, model as model_lib, sharding
from lladax.config import ConfigError
from lladax.train import state as train_state, step as train_step

MASK_ID = 66


def batch(prompt=False):
  """Four rows with different amounts of padding, so microbatch weights matter."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (4, 16)).astype(np.int32)
  segments = np.ones((4, 16), np.int32)
  segments[1, 10:] = 0
  segments[2, 4:] = 0
  segments[3, 8:] = 2
  prompt_mask = np.zeros((4, 16), bool)
  if prompt:
    prompt_mask[:, :3] = True
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
          'positions': jnp.asarray(np.tile(np.arange(16, dtype=np.int32), (4, 1))),
          'prompt_mask': jnp.asarray(prompt_mask)}


@pytest.fixture(scope='module')
def setup():
  model = model_lib.init(tiny_config(), seed=2)
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def close(a, b, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


@pytest.mark.parametrize('sft', [False, True])
def test_microbatches_and_loss_chunks_give_the_whole_batch_gradient(setup, sft):
  graphdef, params = setup
  data = batch(prompt=sft)
  noised = train_step.noise(data, jax.random.key(1), mask_id=MASK_ID, eps=1e-3, sft=sft)
  assert int(noised['masked'].sum()) > 10

  def run(**kw):
    return jax.jit(lambda p: train_step.gradients(graphdef, p, data, noised, **kw))(params)

  grads, metrics = run()
  for kw in ({'microbatches': 4}, {'loss_chunks': 4}, {'microbatches': 2, 'loss_chunks': 2}):
    other_grads, other_metrics = run(**kw)
    close(other_metrics, metrics)
    close(other_grads, grads)


def test_chunked_loss_matches_diffusion_loss_on_the_same_logits(setup):
  graphdef, params = setup
  data = batch()
  noised = train_step.noise(data, jax.random.key(4), mask_id=MASK_ID, eps=1e-3, sft=False)
  model = nnx.merge(graphdef, params)
  logits = model(noised['noisy'], data['positions'], data['segment_ids'])
  _, expected = diffusion.loss(logits, data['tokens'], noised['masked'], noised['p'],
                               noised['real'])
  hidden = model.hidden(noised['noisy'], data['positions'], data['segment_ids'])
  _, got = train_step._chunked_loss(model, hidden, data['tokens'], noised, 8)
  assert set(got) == set(expected)
  close(got, expected)


def test_a_batch_the_microbatches_do_not_divide_is_refused(setup):
  graphdef, params = setup
  data = batch()
  noised = train_step.noise(data, jax.random.key(1), mask_id=MASK_ID, eps=1e-3, sft=False)
  with pytest.raises(ConfigError, match='config.step.microbatches'):
    train_step.gradients(graphdef, params, data, noised, microbatches=3)
  with pytest.raises(ConfigError, match='at least 1'):
    train_step.StepConfig(loss_chunks=0)


def test_update_fn_applies_adamw_to_the_loss_gradient(setup):
  graphdef, params = setup
  tx = optax.sgd(0.5)
  data = batch()
  key = jax.random.key(7)
  step = jax.jit(train_step.update_fn(graphdef, tx, mask_id=MASK_ID, eps=1e-3, sft=False))
  new, _, metrics = step(params, tx.init(params), data, key)
  grads = jax.grad(lambda p: train_step.loss_fn(graphdef, p, data, key, mask_id=MASK_ID,
                                                eps=1e-3, sft=False)[0])(params)
  close(new, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), atol=1e-5)
  assert float(metrics['grad_norm']) == pytest.approx(float(optax.global_norm(grads)), rel=1e-5)


def test_optimizer_state_shardings_mirror_the_parameters():
  mesh = jax.sharding.AbstractMesh((2, 2), ('fsdp', 'tensor'),
                                   axis_types=(jax.sharding.AxisType.Auto,) * 2)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  _, params, _ = train_state.abstract_state(tiny_config(), tx)
  param_sh = sharding.param_shardings(params, mesh)
  adam = train_state.opt_shardings(tx, params, param_sh, mesh)[1][0]
  assert adam.mu['blocks']['q_proj'].get_value().spec == P(None, 'fsdp', 'tensor', None)
  assert adam.nu['blocks']['ff_out'].get_value().spec == P(None, 'tensor', 'fsdp')
  assert adam.nu['wte'].get_value().spec == P(None, 'fsdp')
  assert adam.count.spec == P()


def test_a_nonfinite_step_can_be_skipped(setup):
  graphdef, params = setup
  broken = jax.tree.map(lambda x: x, params)
  broken['ln_f'][...] = jnp.full_like(broken['ln_f'][...], jnp.nan)
  tx = optax.sgd(0.5)
  step = jax.jit(train_step.update_fn(graphdef, tx, mask_id=MASK_ID, eps=1e-3, sft=False,
                                      skip_nonfinite=True))
  new, _, metrics = step(broken, tx.init(broken), batch(), jax.random.key(0))
  assert int(metrics['skipped']) == 1
  np.testing.assert_array_equal(np.asarray(new['wte'][...]), np.asarray(params['wte'][...]))
