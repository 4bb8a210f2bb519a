"""The generate job: continue `config.sample.prompt` with a saved model and the LLaDA sampler."""
from __future__ import annotations

import logging

import jax

from lladax import sampler, saved_model
from lladax.config import parse
from lladax.data import tokenizers


def run(config) -> str:
  recipe = parse(config)
  path = recipe.checkpoint_for('a model folder written by the train job (<workdir>/model) or '
                               'the convert job')
  scfg = recipe.sample
  model, meta, _ = saved_model.load_for_recipe(path, recipe.model, recipe.rope)
  cfg = model.cfg
  tok = tokenizers.load(recipe.tokenizer, meta)
  prompt = recipe.input('sample.prompt', '')
  ids = ([cfg.bos_token_id] if cfg.bos_token_id is not None else []) + tok.encode(prompt)
  tokens, mask = sampler.left_pad([ids], cfg.pad_token_id)
  logging.info('sampling %d tokens after a %d-token prompt', scfg.gen_length, len(ids))
  out = sampler.generate(model, tokens, jax.random.key(recipe.seed), scfg, mask)
  eos = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)
  text = tok.decode(sampler.strip_generation(out[0, tokens.shape[1]:], eos))
  print(prompt + text)
  return text
