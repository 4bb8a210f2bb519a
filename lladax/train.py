"""The train job: LLaDA's masked-diffusion objective on a device mesh, resumable.

One loop serves a laptop and a pod: the mesh (config.mesh) is one device on a CPU and
data x fsdp x context x tensor on a pod. Parameters and AdamW state are initialised straight into
their shardings (or loaded from config.checkpoint for post-training); each step is the sharded
update of lladax/train_step.py; orbax checkpoints (every config.train.checkpoint_every steps, at
the end, and on SIGTERM) hold parameters, optimizer state and the data iterator, so a killed and
restarted run continues with exactly the losses it would have had.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from lladax import (checkpoint, diffusion, flops, metrics as metrics_lib, model as model_lib,
                    model_config, optimizer, sharding, train_checkpoint, train_data, train_step)
from lladax.config import ConfigError, choice, from_section
from lladax.data import global_batch, simple, tokenizers

OBJECTIVES = ('pretrain', 'sft')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  log_every: int = 10
  objective: str = 'pretrain'   # pretrain: mask any real token; sft: never the prompt
  mask_eps: float = diffusion.EPS
  save: bool = True             # write the final model to <workdir>/model
  init: str = 'scratch'         # scratch | checkpoint (post-training: config.checkpoint required)
  checkpoint_every: int = 100   # training checkpoints in <workdir>/checkpoints (resume from there)
  keep_checkpoints: int = 3
  on_nan: str = 'stop'          # a non-finite loss or gradient: stop (naming the step) | skip the step
  eval_every: int = 0           # validation loss every N steps on held-out batches; 0: never
  eval_batches: int = 4
  tensorboard: bool = True      # event files in <workdir>/tensorboard beside metrics.jsonl

  def __post_init__(self):
    choice(self.objective, OBJECTIVES, 'config.train.objective')
    choice(self.init, ('scratch', 'checkpoint'), 'config.train.init')
    choice(self.on_nan, ('stop', 'skip'), 'config.train.on_nan')
    for name in ('checkpoint_every', 'keep_checkpoints', 'eval_batches'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'config.train.{name} must be positive.')
    if self.steps <= 0:
      raise ConfigError('config.train.steps must be positive.')
    if self.log_every <= 0:
      raise ConfigError('config.train.log_every must be positive.')


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


def initial_model(config, mcfg: model_config.ModelConfig, shardings=None) -> model_lib.LLaDA:
  """From scratch, or from `config.checkpoint` (post-training) with the recipe's RoPE rule and
  compute settings applied to the checkpoint's own shape and base; `shardings` (ModelConfig ->
  parameter shardings) restores the parameters straight onto the mesh."""
  if not config.checkpoint:
    return model_lib.init(mcfg, config.seed)
  saved, _ = checkpoint.read_config(config.checkpoint)
  for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'kv_heads', 'mlp_hidden_size',
               'weight_tying'):
    if getattr(saved, name) != getattr(mcfg, name):
      raise ConfigError(f'{config.checkpoint} has {name}={getattr(saved, name)} but the recipe '
                        f'has config.model.{name}={getattr(mcfg, name)}; make them match.')
  rope_cfg = from_section(model_config.RopeConfig, config.rope, 'config.rope')
  model, _ = checkpoint.load_with_rope(config.checkpoint, rope_cfg, shardings=shardings,
                                      **model_config.compute_settings(mcfg))
  return model


class Window:
  """Metrics since the last log line: the diffusion loss is noisy batch to batch, so logs show
  the mean of each interval."""

  def __init__(self):
    self.metrics, self.tokens, self.start = [], 0, time.perf_counter()

  def add(self, metrics: dict, tokens: int) -> None:
    self.metrics.append(metrics)
    self.tokens += tokens

  def summary(self) -> dict:
    out = {k: float(np.mean([float(m[k]) for m in self.metrics])) for k in self.metrics[0]}
    elapsed = time.perf_counter() - self.start
    out.update(tokens_per_second=self.tokens / elapsed, step_time=elapsed / len(self.metrics))
    self.__init__()
    return out


def run(config) -> dict:
  """Trains on `config.data` from scratch or `config.checkpoint`, resuming from the workdir's
  newest training checkpoint when there is one.

  Returns {'model', 'history' (one record per log interval), 'model_dir', 'tokenizer'}.
  """
  mcfg = model_config.from_config(config)
  tcfg = from_section(TrainConfig, config.train, 'config.train')
  ocfg = from_section(optimizer.OptimConfig, config.optim, 'config.optim')
  dcfg = from_section(simple.DataConfig, config.data, 'config.data')
  mesh_cfg = sharding.from_config(config)
  if tcfg.init == 'checkpoint' and not config.checkpoint:
    raise ConfigError("config.train.init='checkpoint' needs config.checkpoint, the model folder "
                      'to post-train (convert a Hugging Face checkpoint with configs/convert.py).')
  step_cfg = from_section(train_step.StepConfig, config.get('step'), 'config.step')
  if dcfg.batch_size % step_cfg.microbatches:
    raise ConfigError(f'config.data.batch_size={dcfg.batch_size} does not split into '
                      f'config.step.microbatches={step_cfg.microbatches}; make it a multiple.')
  meta = checkpoint.read_config(config.checkpoint)[1] if config.checkpoint else None
  tok_cfg = from_section(tokenizers.TokenizerConfig, config.tokenizer, 'config.tokenizer')
  tok = tokenizers.load(tok_cfg, meta)
  check_vocab(mcfg, tok)
  mesh = sharding.make_mesh(mesh_cfg)
  if mesh.size == 1:
    check_fits_one_device(mcfg)
  rules = mesh_cfg.rules
  batch_sh = train_step.batch_sharding(mesh, (dcfg.batch_size, dcfg.seq_len), rules)
  index, count = global_batch.data_shard(mesh, batch_sh.spec)
  open_data = lambda held_out=False: train_data.open_batches(
      config, dcfg, tok, mcfg, rows=dcfg.batch_size // count, process_index=index,
      process_count=count, held_out=held_out)
  data = open_data()
  eval_data = open_data(held_out=True) if tcfg.eval_every else None

  tx = optimizer.adamw(ocfg)
  if config.checkpoint:
    model = initial_model(config, mcfg, lambda cfg: train_step.state_shardings(
        cfg, tx, mesh, rules)[0])
    mcfg = model.cfg
    param_sh, opt_sh = train_step.state_shardings(mcfg, tx, mesh, rules)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  else:
    param_sh, opt_sh = train_step.state_shardings(mcfg, tx, mesh, rules)
    graphdef, params, opt_state = train_step.init_sharded(mcfg, tx, mesh, rules, config.seed)
  sft = tcfg.objective == 'sft'
  step_fn = train_step.sharded_update(
      graphdef, tx, mesh, param_sh, opt_sh, batch_sh, rules, mask_id=mcfg.mask_token_id,
      eps=tcfg.mask_eps, sft=sft, step_cfg=step_cfg, skip_nonfinite=tcfg.on_nan == 'skip')
  eval_fn = train_step.sharded_eval(graphdef, mesh, param_sh, batch_sh, rules,
                                    mask_id=mcfg.mask_token_id, eps=tcfg.mask_eps, sft=sft)

  workdir = config.get('workdir') or ''
  ckpts = None
  start = 0
  if workdir:
    ckpts = train_checkpoint.TrainCheckpoints(
        os.path.join(workdir, 'checkpoints'),
        train_checkpoint.CheckpointConfig(tcfg.checkpoint_every, tcfg.keep_checkpoints),
        # What a checkpoint must match; compute settings (kernel, remat, dtypes) may change.
        {'model': {k: v for k, v in dataclasses.asdict(mcfg).items()
                   if k not in model_config.COMPUTE_FIELDS},
         'seed': config.seed, 'data': config.data.to_dict(),
         'objective': tcfg.objective})
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          {'params': params, 'opt_state': opt_state})
    restored = ckpts.restore_latest(target)
    if restored:
      start, state, data_state = restored
      params, opt_state = state['params'], state['opt_state']
      if data_state:
        data.set_state(data_state)
  logging.info('training %s parameters on a %s mesh for steps %d..%d (%s)',
               f'{mcfg.num_params():,}', dict(mesh.shape), start + 1, tcfg.steps, dcfg.source)

  schedule = optimizer.learning_rate(ocfg)
  flops_per_step = flops.train_per_token(mcfg, dcfg.seq_len) * dcfg.batch_size * dcfg.seq_len
  peak = flops.peak_flops(jax.devices()[0])
  base_key = jax.random.key(config.seed)
  writer = metrics_lib.MetricsWriter(workdir, tcfg.tensorboard)
  preempted = train_checkpoint.Preemption()
  history, window = [], Window()
  step, stopped_early = start, False
  try:
    with tqdm(range(start, tcfg.steps), desc='train', unit='step', dynamic_ncols=True,
              initial=start, total=tcfg.steps) as bar:
      for step in bar:
        batch = global_batch.global_batch(next(data), mesh, batch_sh.spec)
        params, opt_state, metrics = step_fn(params, opt_state, batch,
                                             jax.random.fold_in(base_key, step))
        window.add(metrics, dcfg.batch_size * dcfg.seq_len)
        done = step + 1
        if tcfg.on_nan == 'stop' and not np.isfinite(float(metrics['loss'])):
          raise FloatingPointError(
              f'the loss is {float(metrics["loss"])} at step {done} (gradient norm '
              f'{float(metrics["grad_norm"])}); lower config.optim.learning_rate, check the data, '
              "or set config.train.on_nan='skip'.")
        if done % tcfg.log_every == 0 or done == tcfg.steps:
          record = window.summary()
          record.update(step=done, learning_rate=float(schedule(step)))
          if peak:
            record['mfu'] = flops_per_step / record['step_time'] / (peak * mesh.size)
          if tcfg.eval_every and done % tcfg.eval_every == 0:
            record.update(evaluate(eval_fn, params, eval_data, mesh, batch_sh, base_key, done,
                                   tcfg.eval_batches))
          history.append(record)
          writer.write(done, {k: v for k, v in record.items() if k != 'step'})
          bar.set_postfix(loss=f'{record["loss"]:.3f}', acc=f'{record["masked_accuracy"]:.2f}',
                          lr=f'{record["learning_rate"]:.2g}',
                          tok_s=f'{record["tokens_per_second"]:.0f}')
        stop = preempted.reached(done)
        if ckpts and (done % tcfg.checkpoint_every == 0 or done == tcfg.steps or stop):
          ckpts.save(done, {'params': params, 'opt_state': opt_state}, data.get_state())
        if stop:
          logging.warning('stopped at step %d for preemption; rerun the same command to resume',
                          done)
          stopped_early = True
          break
  finally:
    preempted.close()
    writer.close()
    data.close()
    if ckpts:
      ckpts.close()
  model = nnx.merge(graphdef, params)
  if dcfg.seq_len > model.cfg.max_sequence_length:
    # Post-training at a longer context makes that the trained length, which the RoPE rules of a
    # later extension start from (T_train).
    model.cfg = dataclasses.replace(model.cfg, max_sequence_length=dcfg.seq_len)
  model_dir = None
  if workdir and tcfg.save and step + 1 == tcfg.steps:
    # Keep what the source checkpoint recorded (its Hugging Face config.json, for export).
    extra = {**(meta or {}), 'tokenizer': (meta or {}).get('tokenizer') or
             dataclasses.asdict(tok_cfg)}
    model_dir = checkpoint.save_model(os.path.join(workdir, 'model'), model, extra)
    logging.info('saved the model to %s', model_dir)
  return {'model': model, 'history': history, 'model_dir': model_dir, 'tokenizer': tok,
          'stopped_early': stopped_early}


def evaluate(eval_fn, params, data, mesh, batch_sh, base_key, step: int, batches: int) -> dict:
  """Mean validation metrics over `batches` held-out batches, noised reproducibly per step."""
  got = []
  for i in range(batches):
    batch = global_batch.global_batch(next(data), mesh, batch_sh.spec)
    # A stream of its own (training uses fold_in(base_key, step) for step < 2**31 - 1).
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, 2**31 - 1), step), i)
    got.append(eval_fn(params, batch, key))
  return {f'eval_{k}': float(np.mean([float(g[k]) for g in got])) for k in ('loss',
                                                                            'masked_accuracy')}
