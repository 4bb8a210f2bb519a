"""The training state on the mesh: shardings of parameters, AdamW moments and batches, the state
initialised straight into them, and the jitted update and evaluation with explicit layouts.

Parameters and both AdamW moments follow the logical-axis rules (by default FSDP over 'fsdp' x
'context' and tensor parallelism over 'tensor'); a batch [B, T] is split B over (data, fsdp) and T
over context; scalars and the random key are replicated. Parameters and optimizer state are
donated, so an update rewrites them in place.
"""
from __future__ import annotations

import functools

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lladax import diffusion, model as model_lib, sharding
from lladax.model_config import ModelConfig
from lladax.train.step import BATCH_DTYPES, StepConfig, eval_fn, update_fn


def _path_key(path) -> tuple[str, ...]:
  return tuple(str(p) for p in path)


def opt_shardings(tx: optax.GradientTransformation, abstract_params, param_shardings, mesh):
  """Shardings for tx's state: every leaf that mirrors a parameter (same path suffix and shape,
  e.g. Adam's mu and nu) shares that parameter's sharding; the rest (step counts) replicate."""
  replicated = NamedSharding(mesh, PartitionSpec())
  by_path = {}
  params_leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  shard_leaves = jax.tree.leaves(param_shardings)  # one per parameter, in the same order
  assert len(params_leaves) == len(shard_leaves), (len(params_leaves), len(shard_leaves))
  for (path, leaf), shard in zip(params_leaves, shard_leaves):
    by_path[_path_key(path)] = (leaf.shape, shard)

  def one(path, leaf):
    key = _path_key(path)
    for start in range(len(key)):
      found = by_path.get(key[start:])
      if found and found[0] == leaf.shape:
        return found[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, jax.eval_shape(tx.init, abstract_params))


def batch_sharding(mesh, batch_shape: tuple[int, int], rules=sharding.DEFAULT_RULES
                   ) -> NamedSharding:
  """[B, T] arrays: B over the batch axes, T over context (an axis that does not divide its
  dimension is dropped, with a warning)."""
  return NamedSharding(mesh, sharding.logical_to_spec(sharding.TOKENS, mesh, rules, batch_shape))


def abstract_state(mcfg: ModelConfig, tx: optax.GradientTransformation):
  """(graphdef, params, opt_state) with ShapeDtypeStructs for arrays: nothing is allocated."""
  graphdef, params = nnx.split(model_lib.abstract(mcfg), nnx.Param)
  return graphdef, params, jax.eval_shape(tx.init, params)


def abstract_batch(batch_shape: tuple[int, int]) -> dict:
  return {k: jax.ShapeDtypeStruct(batch_shape, dt) for k, dt in BATCH_DTYPES.items()}


def abstract_key() -> jax.ShapeDtypeStruct:
  return jax.eval_shape(lambda: jax.random.key(0))


def state_shardings(mcfg: ModelConfig, tx: optax.GradientTransformation, mesh,
                    rules=sharding.DEFAULT_RULES):
  """(param shardings, optimizer-state shardings) from the parameters' logical axes."""
  _, params, _ = abstract_state(mcfg, tx)
  param_sh = sharding.param_shardings(params, mesh, rules)
  return param_sh, opt_shardings(tx, params, param_sh, mesh)


def _under_mesh(fn, mesh, rules):
  """fn traced with `mesh` as the ambient mesh and `rules` as the activation rule table, so
  sharding.constrain and kernels that read jax.sharding.get_abstract_mesh() see them."""
  table = sharding.parse_rules(rules) if not isinstance(rules, dict) else rules

  @functools.wraps(fn)
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.use_rules(table):
      return fn(*args)

  return traced


def init_sharded(mcfg: ModelConfig, tx: optax.GradientTransformation, mesh,
                 rules=sharding.DEFAULT_RULES, seed: int = 0):
  """(graphdef, params, opt_state) initialised directly into their shardings: each device
  computes only its own shards, so an 8B model never sits whole on one host."""
  param_sh, opt_sh = state_shardings(mcfg, tx, mesh, rules)
  graphdef = abstract_state(mcfg, tx)[0]

  def init():
    params = nnx.state(model_lib.init(mcfg, seed), nnx.Param)
    return params, tx.init(params)

  params, opt_state = jax.jit(_under_mesh(init, mesh, rules), out_shardings=(param_sh, opt_sh))()
  return graphdef, params, opt_state


def sharded_update(graphdef, tx: optax.GradientTransformation, mesh, param_sh, opt_sh,
                   batch_sh: NamedSharding, rules=sharding.DEFAULT_RULES, *, mask_id: int,
                   eps: float = diffusion.EPS, sft: bool = False,
                   step_cfg: StepConfig | None = None, skip_nonfinite: bool = False):
  """The jitted update with explicit in/out shardings; params and opt_state are donated."""
  step_cfg = step_cfg or StepConfig()
  replicated = NamedSharding(mesh, PartitionSpec())
  step = _under_mesh(update_fn(graphdef, tx, mask_id=mask_id, eps=eps, sft=sft,
                               microbatches=step_cfg.microbatches,
                               loss_chunks=step_cfg.loss_chunks,
                               skip_nonfinite=skip_nonfinite), mesh, rules)
  return jax.jit(step, in_shardings=(param_sh, opt_sh, batch_sh, replicated),
                 out_shardings=(param_sh, opt_sh, replicated), donate_argnums=(0, 1))


def sharded_eval(graphdef, mesh, param_sh, batch_sh: NamedSharding,
                 rules=sharding.DEFAULT_RULES, *, mask_id: int, eps: float = diffusion.EPS,
                 sft: bool = False, step_cfg: StepConfig | None = None):
  """The jitted evaluation forward (masked-diffusion loss and metrics, no gradient)."""
  step_cfg = step_cfg or StepConfig()
  replicated = NamedSharding(mesh, PartitionSpec())
  forward = _under_mesh(eval_fn(graphdef, mask_id=mask_id, eps=eps, sft=sft,
                                loss_chunks=step_cfg.loss_chunks), mesh, rules)
  return jax.jit(forward, in_shardings=(param_sh, batch_sh, replicated),
                 out_shardings=replicated)
