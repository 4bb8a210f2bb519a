"""The train job: LLaDA's masked-diffusion objective on a device mesh, resumable.

One loop serves a laptop and a pod: the mesh (config.mesh) is one device on a CPU and
data x fsdp x context x tensor on a pod. Parameters and AdamW state are initialised straight into
their shardings (or loaded from config.checkpoint for post-training); each step is the sharded
update of lladax/train/step.py; orbax checkpoints (every config.train.checkpoint_every steps, at
the end, and on SIGTERM) hold parameters, optimizer state and the data iterator, so a killed and
restarted run continues with exactly the losses it would have had.

SIGTERM stops the run after the step in progress, or at once while it waits (setting up, the
first step's compile, a batch that does not come), saving its last finished step; the run then
reports stopped_early (main exits with train_checkpoint.EXIT_STOPPED, 143). A rerun of a finished
run writes the model if its save was interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from lladax import diffusion, flops, model as model_lib, model_config, saved_model, sharding
from lladax.config import ConfigError, Recipe, choice, parse
from lladax.data import config as data_config, global_batch, tokenizers
from lladax.train import (batches as train_data, checkpoints as train_checkpoint,
                          metrics as metrics_lib, optimizer, state as train_state)

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
  async_checkpoints: bool = True  # write checkpoints in the background while training continues
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
  """On a mesh of one device, parameters, gradients and both Adam moments sit whole on it."""
  need = mcfg.num_params() * 16
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  have = stats.get('bytes_limit') or os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  if need > have:
    raise ConfigError(
        f'{mcfg.num_params() / 1e9:.1f}B parameters need ~{need / 2**30:.0f} GiB for weights, '
        f'gradients and AdamW state, but one {device.platform} device here has '
        f'{have / 2**30:.0f} GiB; shard it over more devices with config.mesh (e.g. '
        'presets.section(sharding.MeshConfig, fsdp=-1)), or shrink config.model.')


def initial_model(recipe: Recipe, mcfg: model_config.ModelConfig, shardings=None
                  ) -> model_lib.LLaDA:
  """From scratch, or from `config.checkpoint` (post-training) with the recipe's RoPE rule and
  compute settings applied to the checkpoint's own shape and base; `shardings` (ModelConfig ->
  parameter shardings) restores the parameters straight onto the mesh."""
  if not recipe.checkpoint:
    return model_lib.init(mcfg, recipe.seed)
  saved, _ = saved_model.read_config(recipe.checkpoint)
  for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'kv_heads', 'mlp_hidden_size',
               'weight_tying'):
    if getattr(saved, name) != getattr(mcfg, name):
      raise ConfigError(f'{recipe.checkpoint} has {name}={getattr(saved, name)} but the recipe '
                        f'has config.model.{name}={getattr(mcfg, name)}; make them match.')
  return saved_model.load_for_recipe(recipe.checkpoint, mcfg, recipe.rope, shardings)[0]


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


@dataclasses.dataclass
class Job:
  """What the loop works with, built by `prepare`."""
  recipe: Recipe
  tcfg: TrainConfig
  dcfg: data_config.DataConfig
  ocfg: optimizer.OptimConfig
  mcfg: model_config.ModelConfig
  tok: object
  tok_cfg: tokenizers.TokenizerConfig
  meta: dict | None
  mesh: object
  batch_sh: object
  data: object
  eval_data: object
  graphdef: object
  params: object
  opt_state: object
  step_fn: object
  eval_fn: object
  ckpts: train_checkpoint.TrainCheckpoints | None
  start: int = 0
  model_dir: str | None = None


def run(config) -> dict:
  """Trains on `config.data` from scratch or `config.checkpoint`, resuming from the workdir's
  newest training checkpoint when there is one.

  Returns {'model', 'history' (one record per log interval), 'model_dir', 'tokenizer',
  'stopped_early'}. A run stopped by SIGTERM saves a checkpoint of its last finished step and
  returns stopped_early=True and no model (main exits with train_checkpoint.EXIT_STOPPED).
  `config`: the recipe, as a ConfigDict or already parsed (config.parse).
  """
  # Installed first: SIGTERM stops the job at any point, also while it sets up.
  with train_checkpoint.Preemption() as preempted:
    with contextlib.ExitStack() as cleanup:
      try:
        # Several processes stop together after a step (Preemption.reached), never alone.
        with preempted.waiting(jax.process_count() == 1):
          job = prepare(parse(config), cleanup)
      except train_checkpoint.Preempted:
        logging.warning('stopped by SIGTERM before training began; rerun the same command to '
                        'resume (exit code %d)', train_checkpoint.EXIT_STOPPED)
        return stopped_result(None, [])
      if job.start >= job.tcfg.steps:
        return finished(job, cleanup)
      history, done, stopped = train_loop(job, preempted)
    # The data readers are closed and the checkpoint writes finished before the model is saved.
    if stopped:
      return stopped_result(job.tok, history)
    return {'model': save_final(job, done), 'history': history, 'model_dir': job.model_dir,
            'tokenizer': job.tok, 'stopped_early': False}


def stopped_result(tok, history: list) -> dict:
  return {'model': None, 'history': history, 'model_dir': None, 'tokenizer': tok,
          'stopped_early': True}


def prepare(recipe: Recipe, cleanup: contextlib.ExitStack) -> Job:
  """Settings, data, model, optimizer state and the newest checkpoint, restored. Whatever needs
  closing is registered with `cleanup`."""
  mcfg = model_config.resolve_rope(recipe.model, recipe.rope)
  tcfg = recipe.train
  ocfg = recipe.optim
  dcfg = recipe.data
  mesh_cfg = recipe.mesh
  if tcfg.init == 'checkpoint' and not recipe.checkpoint:
    raise ConfigError("config.train.init='checkpoint' needs config.checkpoint, the model folder "
                      'to post-train (convert a Hugging Face checkpoint with configs/convert.py).')
  step_cfg = recipe.step
  if dcfg.batch_size % step_cfg.microbatches:
    raise ConfigError(f'config.data.batch_size={dcfg.batch_size} does not split into '
                      f'config.step.microbatches={step_cfg.microbatches}; make it a multiple.')
  meta = saved_model.read_config(recipe.checkpoint)[1] if recipe.checkpoint else None
  tok_cfg = recipe.tokenizer
  tok = tokenizers.load(tok_cfg, meta)
  check_vocab(mcfg, tok)
  mesh = sharding.make_mesh(mesh_cfg)
  if mesh.size == 1:
    check_fits_one_device(mcfg)
  rules = mesh_cfg.rules
  batch_sh = train_state.batch_sharding(mesh, (dcfg.batch_size, dcfg.seq_len), rules)
  index, count = global_batch.data_shard(mesh, batch_sh.spec)

  def open_data(held_out=False):
    data = train_data.open_batches(
        recipe, dcfg, tok, mcfg, rows=dcfg.batch_size // count, process_index=index,
        process_count=count, held_out=held_out)
    cleanup.callback(data.close)
    return data

  data = open_data()
  eval_data = open_data(held_out=True) if tcfg.eval_every else None

  tx = optimizer.adamw(ocfg)
  if recipe.checkpoint:
    model = initial_model(recipe, mcfg, lambda cfg: train_state.state_shardings(
        cfg, tx, mesh, rules)[0])
    mcfg = model.cfg
    param_sh, opt_sh = train_state.state_shardings(mcfg, tx, mesh, rules)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  else:
    param_sh, opt_sh = train_state.state_shardings(mcfg, tx, mesh, rules)
    graphdef, params, opt_state = train_state.init_sharded(mcfg, tx, mesh, rules, recipe.seed)
  sft = tcfg.objective == 'sft'
  step_fn = train_state.sharded_update(
      graphdef, tx, mesh, param_sh, opt_sh, batch_sh, rules, mask_id=mcfg.mask_token_id,
      eps=tcfg.mask_eps, sft=sft, step_cfg=step_cfg, skip_nonfinite=tcfg.on_nan == 'skip')
  eval_fn = train_state.sharded_eval(graphdef, mesh, param_sh, batch_sh, rules,
                                    mask_id=mcfg.mask_token_id, eps=tcfg.mask_eps, sft=sft)
  job = Job(recipe, tcfg, dcfg, ocfg, mcfg, tok, tok_cfg, meta, mesh, batch_sh, data, eval_data,
            graphdef, params, opt_state, step_fn, eval_fn, ckpts=None)
  if recipe.workdir:
    restore(job, cleanup)
  logging.info('training %s parameters on a %s mesh for steps %d..%d (%s)',
               f'{mcfg.num_params():,}', dict(mesh.shape), job.start + 1, tcfg.steps,
               dcfg.source)
  return job


def restore(job: Job, cleanup: contextlib.ExitStack) -> None:
  """Opens the workdir's training checkpoints and continues from the newest usable one."""
  tcfg = job.tcfg
  job.ckpts = train_checkpoint.TrainCheckpoints(
      os.path.join(job.recipe.workdir, 'checkpoints'),
      train_checkpoint.CheckpointConfig(tcfg.checkpoint_every, tcfg.keep_checkpoints,
                                        tcfg.async_checkpoints),
      # What a checkpoint must match; compute settings (kernel, remat, dtypes) may change.
      {'model': {k: v for k, v in dataclasses.asdict(job.mcfg).items()
                 if k not in model_config.COMPUTE_FIELDS},
       'seed': job.recipe.seed, 'data': dataclasses.asdict(job.recipe.data),
       'objective': tcfg.objective})
  cleanup.callback(job.ckpts.close)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        {'params': job.params, 'opt_state': job.opt_state})
  restored = job.ckpts.restore_latest(target)
  if not restored:
    return
  job.start, state, data_state = restored
  job.params, job.opt_state = state['params'], state['opt_state']
  job.data.set_state(data_state)
  if job.start > tcfg.steps:
    raise ConfigError(
        f'config.train.steps={tcfg.steps} is below step {job.start}, where the checkpoints in '
        f'{job.ckpts.manager.directory} already are; raise config.train.steps above {job.start} '
        'to train further, or use a new config.workdir to start afresh.')


def finished(job: Job, cleanup: contextlib.ExitStack) -> dict:
  """A rerun of a run whose training is done: writes the model if a kill interrupted its save,
  else says that there is nothing to do."""
  cleanup.close()
  path = model_path(job)
  if path and not os.path.exists(path):
    logging.warning('training finished at step %d but %s is missing (its save was interrupted); '
                    'writing it from the checkpoint of step %d', job.start, path, job.start)
    return {'model': save_final(job, job.start), 'history': [], 'model_dir': job.model_dir,
            'tokenizer': job.tok, 'stopped_early': False}
  logging.warning('nothing to train: the checkpoints in %s are at step %d = config.train.steps%s;'
                  ' raise config.train.steps to train further', job.ckpts.manager.directory,
                  job.start, f' and the model is in {path}' if path else '')
  job.model_dir = path
  return {'model': build_model(job), 'history': [], 'model_dir': path, 'tokenizer': job.tok,
          'stopped_early': False}


def model_path(job: Job) -> str | None:
  """Where the final model goes: <workdir>/model, when the run saves one."""
  workdir = job.recipe.workdir
  return os.path.join(workdir, 'model') if workdir and job.tcfg.save else None


def build_model(job: Job) -> model_lib.LLaDA:
  model = nnx.merge(job.graphdef, job.params)
  if job.dcfg.seq_len > model.cfg.max_sequence_length:
    # Post-training at a longer context makes that the trained length, which the RoPE rules of a
    # later extension start from (T_train).
    model.cfg = dataclasses.replace(model.cfg, max_sequence_length=job.dcfg.seq_len)
  return model


def save_final(job: Job, done: int) -> model_lib.LLaDA:
  """The trained model, written to <workdir>/model when the run reached config.train.steps."""
  model = build_model(job)
  job.model_dir = None
  path = model_path(job)
  if path and done == job.tcfg.steps:
    # Keep what the source checkpoint recorded (its Hugging Face config.json, for export).
    meta = job.meta or {}
    extra = {**meta, 'tokenizer': meta.get('tokenizer') or dataclasses.asdict(job.tok_cfg)}
    job.model_dir = saved_model.save_model(path, model, extra)
    logging.info('saved the model to %s', job.model_dir)
  return model


def train_loop(job: Job, preempted: train_checkpoint.Preemption) -> tuple[list, int, bool]:
  """Steps job.start + 1 .. config.train.steps. Returns (history, steps done, stopped by
  SIGTERM)."""
  tcfg, dcfg, mesh = job.tcfg, job.dcfg, job.mesh
  schedule = optimizer.learning_rate(job.ocfg)
  flops_per_step = flops.train_per_token(job.mcfg, dcfg.seq_len) * dcfg.batch_size * dcfg.seq_len
  peak = flops.peak_flops(jax.devices()[0])
  base_key = jax.random.key(job.recipe.seed)
  # Processes must stop at one step: only a lone process may stop in the middle of a wait.
  alone = jax.process_count() == 1
  history, window = [], Window()
  done = saved = job.start
  stop = False
  data_state = job.data.get_state()   # the data's position after `done` batches
  pending = None
  writer = metrics_lib.MetricsWriter(job.recipe.workdir, tcfg.tensorboard,
                                     start_step=job.start)

  def save():
    nonlocal saved
    if job.ckpts and done > saved:
      job.ckpts.save(done, {'params': job.params, 'opt_state': job.opt_state}, data_state)
      saved = done

  try:
    with tqdm(range(job.start, tcfg.steps), desc='train', unit='step', dynamic_ncols=True,
              initial=job.start, total=tcfg.steps) as bar:
      for step in bar:
        with preempted.waiting(alone):
          batch = global_batch.global_batch(next_batch(job, done), mesh, job.batch_sh.spec)
        # The first step compiles (minutes for a large model) and nothing is unsaved before it:
        # SIGTERM then stops at once.
        with preempted.waiting(alone and step == job.start):
          job.params, job.opt_state, metrics = job.step_fn(
              job.params, job.opt_state, batch, jax.random.fold_in(base_key, step))
        if pending is not None:
          # At most one step in flight: SIGTERM stops at the next step, not several
          # dispatched ones later.
          jax.block_until_ready(pending)
        pending = metrics
        window.add(metrics, dcfg.batch_size * dcfg.seq_len)
        done = step + 1
        data_state = job.data.get_state()
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
            record.update(evaluate(job.eval_fn, job.params, job.eval_data, mesh, job.batch_sh,
                                   base_key, done, tcfg.eval_batches))
          history.append(record)
          writer.write(done, {k: v for k, v in record.items() if k != 'step'})
          bar.set_postfix(loss=f'{record["loss"]:.3f}', acc=f'{record["masked_accuracy"]:.2f}',
                          lr=f'{record["learning_rate"]:.2g}',
                          tok_s=f'{record["tokens_per_second"]:.0f}')
        stop = preempted.reached(done)
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps or stop:
          save()
        if stop:
          break
  except train_checkpoint.Preempted:
    stop = True
    save()
  except DataExhausted as e:
    save()
    kept = ' (a checkpoint of that step is saved)' if job.ckpts and done else ''
    raise ConfigError(f'{e}{kept}.') from None
  finally:
    writer.close()
  if stop:
    logging.warning('stopped by SIGTERM at step %d; rerun the same command to resume (exit '
                    'code %d)', done, train_checkpoint.EXIT_STOPPED)
  return history, done, stop


class DataExhausted(Exception):
  """Finite training data ended before config.train.steps."""


def next_batch(job: Job, done: int) -> dict:
  try:
    return next(job.data)
  except StopIteration:
    raise DataExhausted(
        f'the training data ran out after {done} batches, before config.train.steps='
        f'{job.tcfg.steps}; raise config.pipeline.num_epochs (None repeats the data), or set '
        f'config.train.steps={done} to end there') from None


def evaluate(eval_fn, params, data, mesh, batch_sh, base_key, step: int, batches: int) -> dict:
  """Mean validation metrics over `batches` held-out batches, noised reproducibly per step."""
  got = []
  for i in range(batches):
    try:
      rows = next(data)
    except StopIteration:
      raise ConfigError('config.eval_pipeline ran out of validation batches at step '
                        f'{step}; set its num_epochs=None so that it repeats.') from None
    batch = global_batch.global_batch(rows, mesh, batch_sh.spec)
    # A stream of its own (training uses fold_in(base_key, step) for step < 2**31 - 1).
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, 2**31 - 1), step), i)
    got.append(eval_fn(params, batch, key))
  return {f'eval_{k}': float(np.mean([float(g[k]) for g in got])) for k in ('loss',
                                                                            'masked_accuracy')}
