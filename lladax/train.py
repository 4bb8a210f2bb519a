"""The single-host training loop: masked-diffusion loss, AdamW, jit, progress and a final checkpoint."""
from __future__ import annotations

import contextlib
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
  init: str = 'scratch'         # scratch | checkpoint (post-training: config.checkpoint required)

  def __post_init__(self):
    choice(self.objective, OBJECTIVES, 'config.train.objective')
    choice(self.init, ('scratch', 'checkpoint'), 'config.train.init')
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


def check_fits_one_device(mcfg: model_config.ModelConfig) -> None:
  """This loop keeps parameters, gradients and both Adam moments unsharded on one device."""
  need = mcfg.num_params() * 16
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  have = stats.get('bytes_limit') or os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if need > have:
    raise ConfigError(
        f'{mcfg.num_params() / 1e9:.1f}B parameters need ~{need / 2**30:.0f} GiB for weights, '
        f'gradients and AdamW state, but one {device.platform} device here has '
        f'{have / 2**30:.0f} GiB; run this recipe on a pod with the sharded trainer, or shrink '
        'config.model.')


def initial_model(config, mcfg: model_config.ModelConfig) -> model_lib.LLaDA:
  """From scratch, or from `config.checkpoint` (post-training) with the recipe's RoPE rule and
  compute settings applied to the checkpoint's own shape and base."""
  if not config.checkpoint:
    return model_lib.init(mcfg, config.seed)
  saved, _ = checkpoint.read_config(config.checkpoint)
  for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'kv_heads', 'mlp_hidden_size',
               'weight_tying'):
    if getattr(saved, name) != getattr(mcfg, name):
      raise ConfigError(f'{config.checkpoint} has {name}={getattr(saved, name)} but the recipe '
                        f'has config.model.{name}={getattr(mcfg, name)}; make them match.')
  rope_cfg = from_section(model_config.RopeConfig, config.rope, 'config.rope')
  model, _ = checkpoint.load_with_rope(config.checkpoint, rope_cfg,
                                      **model_config.compute_settings(mcfg))
  return model


def fit(step_fn, params, opt_state, data, tcfg: TrainConfig, schedule, seed: int,
        log_path: str | None):
  """Runs tcfg.steps updates with a progress bar; logs window means to the console and log_path."""
  base_key = jax.random.key(seed)
  history, window = [], []  # window: metrics since the last log (the loss is noisy per batch)
  slots = 0
  with contextlib.ExitStack() as stack:
    log = stack.enter_context(open(log_path, 'w')) if log_path else None
    bar = stack.enter_context(tqdm(range(tcfg.steps), desc='train', unit='step',
                                   dynamic_ncols=True))
    start = time.perf_counter()
    for step in bar:
      batch = jax.tree.map(jnp.asarray, next(data))
      params, opt_state, metrics = step_fn(params, opt_state, batch,
                                           jax.random.fold_in(base_key, step))
      window.append(metrics)
      slots += int(np.prod(batch['tokens'].shape))
      if (step + 1) % tcfg.log_every and step + 1 != tcfg.steps:
        continue
      record = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
      window = []
      record.update(step=step + 1, learning_rate=float(schedule(step)),
                    tokens_per_second=slots / (time.perf_counter() - start))
      if not np.isfinite(record['loss']):
        raise FloatingPointError(f'loss is {record["loss"]} at step {step + 1}; lower '
                                 'config.optim.learning_rate or check the data.')
      history.append(record)
      bar.set_postfix(loss=f'{record["loss"]:.3f}', acc=f'{record["masked_accuracy"]:.2f}',
                      lr=f'{record["learning_rate"]:.2g}',
                      tok_s=f'{record["tokens_per_second"]:.0f}')
      if log:
        log.write(json.dumps(record) + '\n')
        log.flush()
  return params, history


def run(config) -> dict:
  """Trains on `config.data`, from scratch or from `config.checkpoint`; saves to the workdir.

  Returns {'model', 'history' (one record per log interval), 'model_dir', 'tokenizer'}.
  """
  mcfg = model_config.from_config(config)
  tcfg = from_section(TrainConfig, config.train, 'config.train')
  ocfg = from_section(optimizer.OptimConfig, config.optim, 'config.optim')
  dcfg = from_section(simple.DataConfig, config.data, 'config.data')
  if tcfg.init == 'checkpoint' and not config.checkpoint:
    raise ConfigError("config.train.init='checkpoint' needs config.checkpoint, the model folder "
                      'to post-train (convert a Hugging Face checkpoint with configs/convert.py).')
  meta = checkpoint.read_config(config.checkpoint)[1] if config.checkpoint else None
  tok_cfg = from_section(tokenizers.TokenizerConfig, config.tokenizer, 'config.tokenizer')
  tok = tokenizers.load(tok_cfg, meta)
  check_vocab(mcfg, tok)
  check_fits_one_device(mcfg)
  data = simple.batches(dcfg, tok, config.seed, eos_id=mcfg.eos_token_id,
                        bos_id=mcfg.bos_token_id)
  model = initial_model(config, mcfg)
  mcfg = model.cfg
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optimizer.adamw(ocfg)
  step_fn = make_step(graphdef, tx, mcfg.mask_token_id, tcfg.mask_eps, tcfg.objective == 'sft')
  logging.info('training %s parameters for %d steps on %s', f'{mcfg.num_params():,}',
               tcfg.steps, dcfg.source)
  workdir = config.get('workdir') or ''
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  params, history = fit(step_fn, params, tx.init(params), data, tcfg,
                        optimizer.learning_rate(ocfg), config.seed,
                        os.path.join(workdir, 'metrics.jsonl') if workdir else None)
  model = nnx.merge(graphdef, params)
  model_dir = None
  if workdir and tcfg.save:
    # Keep what the source checkpoint recorded (its Hugging Face config.json, for export).
    extra = {**(meta or {}), 'tokenizer': (meta or {}).get('tokenizer') or
             dataclasses.asdict(tok_cfg)}
    model_dir = checkpoint.save_model(os.path.join(workdir, 'model'), model, extra)
    logging.info('saved the model to %s', model_dir)
  return {'model': model, 'history': history, 'model_dir': model_dir, 'tokenizer': tok}
