"""Loading what an evaluation job runs: the checkpoint under the recipe (RoPE rule and compute
settings), its tokenizer, its placement on a mesh, or the job's oracle instead; and `info`, what
every results file records about the model and the protocol."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
from typing import Any, Callable

import jax.numpy as jnp

from lladax import saved_model
from lladax.config import ConfigError, Recipe
from lladax.data import tokenizers
from lladax.evals import protocols
from lladax.evals.eval_settings import EvalConfig
from lladax.evals.model_calls import LLADAX_GENERATION, Generator, ModelGenerator


def load(recipe: Recipe, oracle: bool = True) -> tuple[Any, tokenizers.Tokenizer, dict]:
  """(model, tokenizer, info) for `config.checkpoint` with `config.rope`'s rule applied to the
  checkpoint's own base; `info` is what every results file records about the model.
  oracle: whether the job has an oracle to offer instead when the checkpoint is missing."""
  instead = ', or --config.eval.oracle=True to check the pipeline without a model' if oracle else ''
  path = recipe.checkpoint_for(f'a model folder from the train or convert job{instead}')
  rope_cfg = recipe.rope
  model, meta, saved = saved_model.load_for_recipe(
      path, recipe.model if recipe.has('model') else None, rope_cfg)
  tok = tokenizers.load(recipe.tokenizer, meta)
  cfg = model.cfg
  info = {
      'checkpoint': os.path.abspath(path),
      'rope': {'rule': rope_cfg.rule, 'target_length': rope_cfg.target_length,
               'checkpoint_base': saved.rope_theta, 'base': cfg.rope_theta,
               'scale': cfg.rope_theta / saved.rope_theta,
               'position_scale': cfg.rope_position_scale},
      'model': {'params': cfg.num_params(), 'trained_length': cfg.max_sequence_length,
                'dtype': cfg.dtype, 'param_dtype': cfg.param_dtype,
                'attention_kernel': cfg.attention_kernel},
      'tokenizer': meta.get('tokenizer'),
  }
  logging.info('loaded %s (%s parameters), RoPE base %.6g (%s), attention %s',
               info['checkpoint'], f'{cfg.num_params():,}', cfg.rope_theta, rope_cfg.rule,
               cfg.attention_kernel)
  return model, tok, info


def oracle_info(recipe: Recipe) -> dict:
  return {'checkpoint': 'oracle', 'rope': None, 'model': None,
          'tokenizer': dataclasses.asdict(recipe.tokenizer)}


def mesh_hook(name: str) -> Callable:
  module, _, fn = name.partition(':')
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f'config.eval.mesh_hook={name!r} cannot be imported ({e}); name an '
                      'importable "module:function".') from None


def place(model, recipe: Recipe, ecfg: EvalConfig):
  """(model, put, context): on one device put is jnp.asarray and context does nothing; a mesh
  hook shards the model and the batches and may name a context for the calls."""
  if not ecfg.mesh_hook:
    return model, jnp.asarray, contextlib.nullcontext
  placed = tuple(mesh_hook(ecfg.mesh_hook)(model, recipe.raw))   # the hook reads the recipe
  return placed if len(placed) == 3 else (*placed, contextlib.nullcontext)


def model_generator(recipe: Recipe, ecfg: EvalConfig,
                    generation: protocols.Generation = LLADAX_GENERATION):
  """(generator, tokenizer, info) for the checkpoint the recipe names."""
  model, tok, info = load(recipe)
  model, put, context = place(model, recipe, ecfg)
  return ModelGenerator(model, tok, ecfg.batch_size, ecfg.pad_multiple, put, context,
                        generation), tok, info


def setup(recipe: Recipe, ecfg: EvalConfig, generator: Generator | None = None,
          oracle: Callable[[], Generator] | None = None, protocol: str = 'lladax'):
  """(generator, model tokenizer, info): the checkpoint's model, or `generator` if one is passed,
  or the job's oracle with config.eval.oracle (then the tokenizer comes from config.tokenizer).
  `info` records the protocol, its generation settings and the recipe's deviations from them."""
  generation, deviations = protocols.generation(
      protocol, ecfg, recipe.model if recipe.has('model') else None)
  if recipe.has('sample'):
    deviations += protocols.cache_deviations(recipe.sample)
  record = {'protocol': protocol, 'generation': dataclasses.asdict(generation),
            'deviations': deviations}
  if deviations:
    logging.warning('protocol %s, with deviations: %s', protocol, '; '.join(deviations))
  if generator is None and ecfg.oracle and oracle is not None:
    generator = oracle()
  if generator is None:
    generator, tok, info = model_generator(recipe, ecfg, generation)
    return generator, tok, dict(info, **record)
  meta = saved_model.read_config(recipe.checkpoint)[1] if recipe.checkpoint else None
  info = (oracle_info(recipe) if ecfg.oracle else
          {'checkpoint': recipe.checkpoint or 'custom generator', 'rope': None,
           'model': None})
  return generator, tokenizers.load(recipe.tokenizer, meta), dict(info, **record)
