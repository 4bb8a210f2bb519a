"""Multi-device checks, run by tests/test_sharding_devices.py in a subprocess with 8 simulated CPU
devices (XLA_FLAGS must be set before jax is imported, which pytest's other modules prevent).

Prints one JSON object: every number the test asserts on, so a failure shows the values.
"""
# pylint: disable=wrong-import-position
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from helpers import tiny_config

from lladax import attention, diffusion, model as model_lib, sharding
from lladax.config import ConfigError
from lladax.train import state as train_state, step as train_step

jax.config.update('jax_default_matmul_precision', 'highest')

B, T, MASK_ID = 2, 16, 66


def batch():
  """Two rows of packed documents, one with padding, so segments cross context shards."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (B, T)).astype(np.int32)
  segments = np.array([[1] * 5 + [2] * 7 + [3] * 4, [1] * 9 + [2] * 4 + [0] * 3], np.int32)
  positions = np.zeros((B, T), np.int32)
  for b in range(B):
    for t in range(1, T):
      positions[b, t] = positions[b, t - 1] + 1 if segments[b, t] == segments[b, t - 1] else 0
  return {'tokens': tokens, 'positions': positions, 'segment_ids': segments,
          'prompt_mask': np.zeros((B, T), bool)}


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def spec_of(x) -> list:
  return [list(s) if isinstance(s, tuple) else s for s in x.sharding.spec]


def noising_key(data) -> jax.Array:
  """A key that masks at least half of the real tokens, so the loss has something to weigh."""
  real = data['segment_ids'] > 0
  for seed in range(100):
    key = jax.random.key(seed)
    _, masked, _ = diffusion.forward_mask(key, jnp.asarray(data['tokens']), MASK_ID,
                                          jnp.asarray(real))
    if int(masked.sum()) * 2 >= int(real.sum()):
      return key
  raise AssertionError('no key masks half the tokens')


KW = dict(mask_id=MASK_ID, eps=1e-3, sft=False)
TX = optax.adamw(1e-3)


def _grad_fn(graphdef):
  grad = jax.value_and_grad(train_step.loss_fn, argnums=1, has_aux=True)
  return lambda p, b, k: grad(graphdef, p, b, k, **KW)


def single_device(data, key) -> dict:
  """The oracle: the dense reference kernel, no remat, one device, in one jit."""
  model = model_lib.init(tiny_config(), seed=1)
  graphdef, params = nnx.split(model, nnx.Param)
  grad_fn = _grad_fn(graphdef)

  def oracle(params, data, key):
    (loss, metrics), grads = grad_fn(params, data, key)
    updates, _ = TX.update(grads, TX.init(params), params)
    return loss, metrics, grads, optax.apply_updates(params, updates)

  loss, metrics, grads, new = jax.jit(oracle)(params, data, key)
  # Host copies: the sharded update donates its inputs.
  return {'params': jax.tree.map(np.asarray, params), 'loss': loss, 'metrics': metrics,
          'grads': grads, 'new': new}


def on_mesh(kernel: str, mesh_sizes: dict, data, key, oracle: dict,
            step_cfg=train_step.StepConfig()) -> dict:
  """Loss, gradients and one AdamW update on the mesh (full remat) against the oracle."""
  cfg = tiny_config(attention_kernel=kernel, remat_policy='full')
  graphdef = nnx.split(model_lib.abstract(cfg), nnx.Param)[0]
  mesh = sharding.make_mesh(sharding.MeshConfig(**mesh_sizes))
  param_sh, opt_sh = train_state.state_shardings(cfg, TX, mesh)
  batch_sh = train_state.batch_sharding(mesh, (B, T))
  params = jax.device_put(oracle['params'], param_sh)
  sharded_data = jax.device_put(data, batch_sh)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  grad_fn = jax.jit(train_state._under_mesh(_grad_fn(graphdef), mesh, sharding.DEFAULT_RULES),
                    in_shardings=(param_sh, batch_sh, rep))
  (loss, metrics), grads = grad_fn(params, sharded_data, key)
  hlo = grad_fn.lower(params, sharded_data, key).as_text()
  update = train_state.sharded_update(graphdef, TX, mesh, param_sh, opt_sh, batch_sh, **KW,
                                     step_cfg=step_cfg)
  new, opt_state, _ = update(params, jax.device_put(TX.init(params), opt_sh),
                             sharded_data, key)
  return {
      'kernel': kernel, 'mesh': mesh_sizes, 'step': dataclasses.asdict(step_cfg),
      'loss_single': float(oracle['loss']), 'loss_mesh': float(loss),
      'masked_tokens': int(oracle['metrics']['masked_tokens']),
      'metrics_diff': max_diff(oracle['metrics'], metrics),
      'grad_diff': max_diff(oracle['grads'], grads),
      'grad_scale': max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(oracle['grads'])),
      'update_diff': max_diff(oracle['new'], new),
      'param_specs': {k: spec_of(v[...]) for k, v in (
          ('wte', new['wte']), ('q_proj', new['blocks']['q_proj']),
          ('k_proj', new['blocks']['k_proj']), ('attn_out', new['blocks']['attn_out']),
          ('ff_proj', new['blocks']['ff_proj']), ('ff_out', new['blocks']['ff_out']),
          ('lm_head', new['lm_head']), ('attn_norm', new['blocks']['attn_norm']),
          ('ln_f', new['ln_f']))},
      'mu_spec': spec_of(opt_state[0].mu['blocks']['ff_proj'][...]),
      'count_spec': spec_of(opt_state[0].count),
      'shard_shape': {'q_proj': list(new['blocks']['q_proj'][...].addressable_shards[0]
                                     .data.shape),
                      'ff_out': list(new['blocks']['ff_out'][...].addressable_shards[0]
                                     .data.shape)},
      'constraints_in_hlo': hlo.count('sharding_constraint'),
  }


def sharded_init() -> dict:
  """init_sharded gives the same values as a one-device init, already in place."""
  cfg = tiny_config()
  mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=2, context=2, tensor=2))
  _, params, opt_state = train_state.init_sharded(cfg, TX, mesh, seed=5)
  reference = nnx.state(model_lib.init(cfg, seed=5), nnx.Param)
  return {'init_diff': max_diff(params, reference),
          'ff_proj_spec': spec_of(params['blocks']['ff_proj'][...]),
          'ff_proj_shard': list(params['blocks']['ff_proj'][...].addressable_shards[0].data.shape),
          'nu_spec': spec_of(opt_state[0].nu['blocks']['ff_proj'][...]),
          'count_spec': spec_of(opt_state[0].count)}


def constrain_checks() -> dict:
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, context=2))
  x = jnp.zeros((4, 8, 6))
  plain = jax.jit(lambda x: sharding.constrain(x, sharding.RESIDUAL))(x)
  with jax.set_mesh(mesh):
    pinned = jax.jit(lambda x: sharding.constrain(x, sharding.RESIDUAL))(x)
    odd = jax.jit(lambda x: sharding.constrain(x, sharding.RESIDUAL))(jnp.zeros((3, 8, 6)))
  return {'no_mesh_devices': len(plain.sharding.device_set),
          'residual_spec': spec_of(pinned), 'odd_batch_spec': spec_of(odd)}


def mesh_checks() -> dict:
  out = {}
  mesh = sharding.make_mesh(sharding.MeshConfig(context=4))
  out['filled'] = dict(zip(mesh.axis_names, mesh.axis_sizes))
  out['axis_types'] = [str(t) for t in mesh.axis_types]
  for name, cfg in (('too_many', sharding.MeshConfig(fsdp=4, context=4)),
                    ('not_dividing', sharding.MeshConfig(fsdp=-1, context=3))):
    try:
      sharding.make_mesh(cfg)
      out[name] = None
    except ConfigError as e:
      out[name] = str(e)
  return out


def main():
  data = batch()
  key = noising_key(data)
  oracle = single_device(data, key)
  context_kernel = 'ring' if 'ring' in attention.KERNELS else 'reference'
  result = {
      'devices': jax.device_count(),
      'context': on_mesh(context_kernel, {'fsdp': 2, 'context': 4}, data, key, oracle),
      'tensor': on_mesh('reference', {'fsdp': 2, 'context': 2, 'tensor': 2}, data, key, oracle,
                        train_step.StepConfig(microbatches=2, loss_chunks=4)),
      'init': sharded_init(),
      'constrain': constrain_checks(),
      'mesh': mesh_checks(),
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
