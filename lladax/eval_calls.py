"""Ahead-of-time plans of the evaluation jobs' own model calls, at their longest inputs.

An evaluation recipe (one with a `niah`, `ruler`, `longbench` or `ppl` section) asks the plan job
for what the job will run, not for a training step: the sampler (`sampler._generate`, every
denoising step of one generation) at the recipe's longest prompt plus its decode length, or the
perplexity scorer's forward at the longest prefix. Each is compiled for one chip of the topology,
which is how an evaluation job runs without `config.eval.mesh_hook`, with the recipe's attention
kernel, dtypes and RoPE rule, and reported as per-chip memory against HBM.

Lengths come from the recipe the way the job reads them. NIAH and RULER count their lengths in
a counting tokenizer (cl100k_base under the papers' protocols); the model's tokenizer sees about
as many tokens for English, so `config.plan.eval_length` can set the prompt width when it
differs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lladax import flops, model as model_lib, sampler, sharding
from lladax.attention import auto
from lladax.config import Recipe
from lladax.evals import eval_settings, longbench, model_calls, ruler_opencompass, ruler_tasks
from lladax.train import state as train_state

EVAL_SECTIONS = ('niah', 'ruler', 'longbench', 'ppl')


@dataclasses.dataclass(frozen=True)
class EvalCall:
  """One evaluation job's largest model call."""
  job: str                                    # 'eval_niah', ...
  batch: int                                  # rows per call (config.eval.batch_size)
  prompt: int                                 # prompt width in tokens, padded as the job pads
  source: str                                 # where the length comes from
  sample: sampler.SamplerConfig | None = None  # generation jobs: the decode settings
  tail: int = 0                               # scoring: positions through the LM head


def _decode(recipe: Recipe, gen_length: int, block_length: int, steps, where: str):
  return eval_settings.sampler_settings(recipe.sample, None, **eval_settings.decode_settings(
      gen_length, block_length, steps, where))


def _width(recipe: Recipe, length: int, override: int) -> int:
  return model_calls.bucket(override or length, recipe.eval.pad_multiple)


def _from(source: str, override: int) -> str:
  return f'config.plan.eval_length={override}, not {source}' if override else source


def eval_calls(recipe: Recipe, length: int = 0) -> list[EvalCall]:
  """The largest call of each evaluation section the recipe holds; `length` overrides the prompt
  length (in model tokens)."""
  batch = recipe.eval.batch_size
  calls = []
  if recipe.has('niah'):
    cfg = recipe.niah
    longest = max(cfg.resolved('lengths'))
    calls.append(EvalCall(
        'eval_niah', batch, _width(recipe, longest, length),
        _from(f'config.niah: the longest of the {cfg.grid_name} lengths, {longest} counted '
              'tokens', length),
        _decode(recipe, cfg.gen_length, cfg.block_length, cfg.resolved('steps'), 'config.niah')))
  if recipe.has('ruler'):
    cfg = recipe.ruler
    longest = max(cfg.grid())
    budgets = (ruler_tasks.BUDGET if cfg.protocol == 'lladax'
               else ruler_opencompass.TOKENS_TO_GENERATE)
    calls.append(EvalCall(
        'eval_ruler', batch, _width(recipe, longest, length),
        _from(f'config.ruler: the longest {cfg.protocol} length, {longest} counted tokens',
              length),
        _decode(recipe, cfg.gen_length or max(budgets.values()), cfg.block_length, cfg.steps,
                'config.ruler')))
  if recipe.has('longbench'):
    cfg = recipe.longbench
    budgets = longbench.OC_MAX_OUT_LEN if cfg.papers else longbench.MAX_NEW_TOKENS
    calls.append(EvalCall(
        'eval_longbench', batch, _width(recipe, cfg.prompt_length, length),
        _from(f'config.longbench: prompts cut to {cfg.prompt_length} tokens ({cfg.protocol}), '
              f'the largest output budget {max(budgets.values())}', length),
        _decode(recipe, max(budgets.values()), cfg.block_length, cfg.steps, 'config.longbench')))
  if recipe.has('ppl'):
    cfg = recipe.ppl
    longest = max(cfg.lengths)
    calls.append(EvalCall('eval_ppl', batch, _width(recipe, longest, length),
                          _from(f'config.ppl: the longest length, {longest} tokens', length),
                          tail=cfg.chunk))
  return calls


def _abstract(tree, where):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), tree)


def lowered(call: EvalCall, mcfg, device):
  """The job's jitted function lowered for `call` on one chip (nothing allocated)."""
  mesh = sharding.make_mesh(sharding.MeshConfig(), [device])
  where = NamedSharding(mesh, PartitionSpec())
  graphdef, state = nnx.split(model_lib.abstract(mcfg))
  state = _abstract(state, where)
  tokens = jax.ShapeDtypeStruct((call.batch, call.prompt), jnp.int32, sharding=where)
  # Traced under the mesh, as a compile for TPU must be: the kernels read the platform from it.
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.use_rules(
      sharding.parse_rules(sharding.MeshConfig().rules)):
    if call.sample is None:
      targets = jax.ShapeDtypeStruct((call.batch, call.tail), jnp.int32, sharding=where)
      return model_calls._tail_cross_entropy.lower(  # pylint: disable=protected-access
          graphdef, state, tokens, tokens, targets)
    mask = jax.ShapeDtypeStruct(tokens.shape, jnp.bool_, sharding=where)
    key = jax.ShapeDtypeStruct((), train_state.abstract_key().dtype, sharding=where)
    return sampler._generate.lower(  # pylint: disable=protected-access
        graphdef, state, tokens, mask, key, call.sample, mcfg.mask_token_id, (),
        sampler.deferred_ids(call.sample, mcfg.eos_token_id, mcfg.eot_token_id), 0,
        'prompt_tokens')


def forward_flops(call: EvalCall, mcfg) -> float:
  """FLOPs of the call: one forward over prompt + answer per denoising step (times two rows
  with classifier-free guidance), or one forward for scoring."""
  if call.sample is None:
    return flops.forward_per_token(mcfg, call.prompt)['total'] * call.batch * call.prompt
  length = call.prompt + call.sample.gen_length
  rows = call.batch * (2 if call.sample.cfg_scale > 0 else 1)
  return flops.forward_per_token(mcfg, length)['total'] * rows * length * call.sample.steps


def describe(call: EvalCall, mcfg) -> dict:
  """The record of a planned call, before its compile."""
  record = {'job': call.job, 'batch': call.batch, 'prompt_tokens': call.prompt,
            'length_from': call.source,
            'attention': (auto.resolve('tpu', mcfg.dtype) if mcfg.attention_kernel == 'auto'
                          else mcfg.attention_kernel),
            'flops': forward_flops(call, mcfg)}
  if call.sample is not None:
    record.update(gen_length=call.sample.gen_length, block_length=call.sample.block_length,
                  steps=call.sample.steps)
  else:
    record['scored_tokens'] = call.tail
  return record
