"""The single-host training loop: masked-diffusion loss, AdamW, jit, progress and a final checkpoint."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from lladax import checkpoint, diffusion, model as model_lib, model_config, optimizer
from lladax.config import ConfigError, choice, from_section
from lladax.data import simple, tokenizers

OBJECTIVES = ('pretrain', 'sft')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  log_every: int = 10
  objective: str = 'pretrain'   # pretrain: mask any real token; sft: never the prompt
  mask_eps: float = diffusion.EPS
  save: bool = True             # write the final model to <workdir>/model

  def __post_init__(self):
    choice(self.objective, OBJECTIVES, 'config.train.objective')
    if self.steps <= 0:
      raise ConfigError('config.train.steps must be positive.')
    if self.log_every <= 0:
      raise ConfigError('config.train.log_every must be positive.')


def make_step(graphdef, tx: optax.GradientTransformation, mask_id: int, eps: float, sft: bool):
  """A jitted (params, opt_state, batch, key) -> (params, opt_state, metrics) update."""

  def loss_fn(params, batch, key):
    model = nnx.merge(graphdef, params)
    real = batch['segment_ids'] > 0
    maskable = real & ~batch['prompt_mask']
    noisy, masked, p = diffusion.forward_mask(key, batch['tokens'], mask_id, maskable, eps)
    logits = model(noisy, batch['positions'], batch['segment_ids'])
    return diffusion.loss(logits, batch['tokens'], masked, p, real, maskable if sft else None)

  def step(params, opt_state, batch, key):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.global_norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  return jax.jit(step, donate_argnums=(0, 1))


def check_vocab(mcfg: model_config.ModelConfig, tokenizer) -> None:
  if tokenizer.vocab_size > mcfg.vocab_size:
    raise ConfigError(f'the tokenizer has {tokenizer.vocab_size} tokens but config.model.'
                      f'vocab_size={mcfg.vocab_size}; raise vocab_size to at least '
                      f'{tokenizer.vocab_size}.')


def run(config) -> dict:
  """Trains from scratch on `config.data`; returns {'model', 'history', 'model_dir'}."""
  mcfg = model_config.from_config(config)
  tcfg = from_section(TrainConfig, config.train, 'config.train')
  ocfg = from_section(optimizer.OptimConfig, config.optim, 'config.optim')
  dcfg = from_section(simple.DataConfig, config.data, 'config.data')
  tok = tokenizers.load(from_section(tokenizers.TokenizerConfig, config.tokenizer,
                                     'config.tokenizer'))
  check_vocab(mcfg, tok)
  data = simple.batches(dcfg, tok, config.seed, eos_id=mcfg.eos_token_id,
                        bos_id=mcfg.bos_token_id)

  model = model_lib.init(mcfg, config.seed)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer.adamw(ocfg)
  opt_state = tx.init(params)
  schedule = optimizer.learning_rate(ocfg)
  step_fn = make_step(graphdef, tx, mcfg.mask_token_id, tcfg.mask_eps, tcfg.objective == 'sft')
  logging.info('training %s parameters for %d steps on %s', f'{mcfg.num_params():,}',
               tcfg.steps, dcfg.source)

  workdir = config.get('workdir') or ''
  log_file = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    log_file = open(os.path.join(workdir, 'metrics.jsonl'), 'w')  # pylint: disable=consider-using-with
  base_key = jax.random.key(config.seed)
  history = []
  tokens_seen = 0
  bar = tqdm(range(tcfg.steps), desc='train', unit='step', dynamic_ncols=True)
  start = time.perf_counter()
  for step in bar:
    batch = jax.tree.map(jnp.asarray, next(data))
    params, opt_state, metrics = step_fn(params, opt_state, batch,
                                         jax.random.fold_in(base_key, step))
    tokens_seen += int(np.prod(batch['tokens'].shape))
    if (step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps:
      record = {k: float(v) for k, v in metrics.items()}
      elapsed = time.perf_counter() - start
      record.update(step=step + 1, learning_rate=float(schedule(step)),
                    tokens_per_second=tokens_seen / elapsed)
      if not np.isfinite(record['loss']):
        raise FloatingPointError(f'loss is {record["loss"]} at step {step + 1}; lower '
                                 'config.optim.learning_rate or check the data.')
      history.append(record)
      bar.set_postfix(loss=f'{record["loss"]:.3f}', acc=f'{record["masked_accuracy"]:.2f}',
                      lr=f'{record["learning_rate"]:.2g}', tok_s=f'{record["tokens_per_second"]:.0f}')
      if log_file:
        log_file.write(json.dumps(record) + '\n')
        log_file.flush()
  bar.close()
  if log_file:
    log_file.close()
  model = nnx.merge(graphdef, params)
  model_dir = None
  if workdir and tcfg.save:
    model_dir = checkpoint.save_model(os.path.join(workdir, 'model'), model,
                                      {'tokenizer': config.tokenizer.to_dict()})
    logging.info('saved the model to %s', model_dir)
  return {'model': model, 'history': history, 'model_dir': model_dir, 'tokenizer': tok}
