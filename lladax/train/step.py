"""The masked-diffusion update as pure functions of (params, opt_state, batch, key): the forward
process, the LLaDA loss, gradients (accumulated over microbatches) and the AdamW update.
lladax/train/state.py lays them out on a mesh; StepConfig's knobs (microbatches, loss_chunks)
cut activation memory without changing the result.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lladax import diffusion
from lladax.config import ConfigError

BATCH_DTYPES = {'tokens': jnp.int32, 'positions': jnp.int32, 'segment_ids': jnp.int32,
                'prompt_mask': jnp.bool_}


def noise(batch: dict, key: jax.Array, *, mask_id: int, eps: float, sft: bool) -> dict:
  """The forward process for `batch` (tokens, positions, segment_ids, prompt_mask [B, T]):
  noisy tokens, which were masked, each row's mask probability p, the real (non-padding) tokens
  and, for SFT, the answer tokens the loss is normalised by."""
  real = batch['segment_ids'] > 0
  maskable = real & ~batch['prompt_mask']
  noisy, masked, p = diffusion.forward_mask(key, batch['tokens'], mask_id, maskable, eps)
  return {'noisy': noisy, 'masked': masked, 'p': p, 'real': real,
          'answer': maskable if sft else None}


def _strided(x: jax.Array, parts: int, axis: int) -> jax.Array:
  """Splits `axis` into `parts` interleaved slices, slice index first: slice j holds indices
  j, j + parts, ... A dimension laid out in contiguous blocks over a mesh axis stays evenly
  spread, so every slice keeps every device busy."""
  n = x.shape[axis]
  if n % parts:
    raise ConfigError(f'a dimension of {n} does not split into {parts} parts; make '
                      'config.step.microbatches divide the batch and config.step.loss_chunks '
                      'divide the sequence length.')
  x = x.reshape(*x.shape[:axis], n // parts, parts, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis + 1, 0)


def _unstrided(x: jax.Array, axis: int) -> jax.Array:
  """The inverse of _strided."""
  x = jnp.moveaxis(x, 0, axis + 1)
  return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])


def _chunked_loss(model, hidden: jax.Array, targets: jax.Array, noised: dict, chunks: int):
  """diffusion.loss computed `chunks` slices of the sequence at a time: only one slice's logits
  [B, T / chunks, V] exist at once, forward and backward (each slice is rematerialised)."""

  @jax.checkpoint
  def per_token(h, tgt):
    logits = model.logits(h)
    return diffusion.token_cross_entropy(logits, tgt), jnp.argmax(logits, axis=-1) == tgt

  ce, correct = jax.lax.map(lambda a: per_token(*a),
                            (_strided(hidden, chunks, 1), _strided(targets, chunks, 1)))
  ce, correct = _unstrided(ce, 1), _unstrided(correct, 1)
  return diffusion.reduce_loss(ce, correct, noised['masked'], noised['p'], noised['real'],
                               noised['answer'])


def noised_loss(graphdef, params, batch: dict, noised: dict, *, loss_chunks: int = 1
                ) -> tuple[jax.Array, dict]:
  """LLaDA's loss and metrics for an already noised batch."""
  model = nnx.merge(graphdef, params)
  if loss_chunks == 1:
    logits = model(noised['noisy'], batch['positions'], batch['segment_ids'])
    return diffusion.loss(logits, batch['tokens'], noised['masked'], noised['p'], noised['real'],
                          noised['answer'])
  hidden = model.hidden(noised['noisy'], batch['positions'], batch['segment_ids'])
  return _chunked_loss(model, hidden, batch['tokens'], noised, loss_chunks)


def loss_fn(graphdef, params, batch: dict, key: jax.Array, *, mask_id: int, eps: float,
            sft: bool, loss_chunks: int = 1) -> tuple[jax.Array, dict]:
  """LLaDA's loss on `batch` (tokens, positions, segment_ids, prompt_mask [B, T]) noised with
  `key`; returns (loss, metrics)."""
  noised = noise(batch, key, mask_id=mask_id, eps=eps, sft=sft)
  return noised_loss(graphdef, params, batch, noised, loss_chunks=loss_chunks)


def _combine(metrics: dict, weights: jax.Array) -> dict:
  """Per-microbatch metrics [k] -> the whole batch's: the loss by its weight, token counts
  summed, per-masked-token rates weighted by masked tokens, anything else averaged."""
  masked = metrics['masked_tokens']
  out = {}
  for name, value in metrics.items():
    if name == 'loss':
      out[name] = jnp.sum(weights * value)
    elif name.endswith('_tokens'):
      out[name] = jnp.sum(value)
    elif name.startswith('masked_'):
      out[name] = jnp.sum(value * masked) / jnp.maximum(jnp.sum(masked), 1)
    else:
      out[name] = jnp.mean(value)
  return out


def gradients(graphdef, params, batch: dict, noised: dict, *, microbatches: int = 1,
              loss_chunks: int = 1) -> tuple[dict, dict]:
  """(grads, metrics) of the whole batch, `microbatches` row slices at a time.

  Each slice's loss is normalised within the slice, so slices are weighted to give exactly the
  whole batch's loss: by their share of real tokens (pre-training) or of rows (SFT). Slices
  interleave rows (_strided), so each keeps the batch's layout over the mesh.
  """
  grad = jax.value_and_grad(functools.partial(noised_loss, graphdef, loss_chunks=loss_chunks),
                            has_aux=True)
  if microbatches == 1:
    (_, metrics), grads = grad(params, batch, noised)
    return grads, metrics
  parts = jax.tree.map(lambda x: _strided(x, microbatches, 0), (batch, noised))
  if noised['answer'] is None:
    real = jnp.sum(parts[1]['real'], axis=(1, 2)).astype(jnp.float32)
    weights = real / jnp.maximum(jnp.sum(real), 1.0)
  else:
    weights = jnp.full((microbatches,), 1.0 / microbatches, jnp.float32)

  def one(total, part):
    (b, n), w = part
    (_, metrics), g = grad(params, b, n)
    return jax.tree.map(lambda t, x: t + w * x, total, g), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, metrics = jax.lax.scan(one, zeros, (parts, weights))
  return grads, _combine(metrics, weights)


def update_fn(graphdef, tx: optax.GradientTransformation, *, mask_id: int, eps: float,
              sft: bool, microbatches: int = 1, loss_chunks: int = 1,
              skip_nonfinite: bool = False):
  """The unjitted (params, opt_state, batch, key) -> (params, opt_state, metrics) update.

  microbatches and loss_chunks trade speed for activation memory without changing the result
  (see StepConfig). skip_nonfinite keeps the old parameters and optimizer state when the loss or
  the gradient norm is not finite (metrics['skipped'] = 1).
  """

  def step(params, opt_state, batch, key):
    noised = noise(batch, key, mask_id=mask_id, eps=eps, sft=sft)
    grads, metrics = gradients(graphdef, params, batch, noised, microbatches=microbatches,
                               loss_chunks=loss_chunks)
    metrics['grad_norm'] = optax.global_norm(grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if skip_nonfinite:
      ok = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_params, new_opt = keep(new_params, params), keep(new_opt, opt_state)
      metrics['skipped'] = (~ok).astype(jnp.int32)
    return new_params, new_opt, metrics

  return step


def eval_fn(graphdef, *, mask_id: int, eps: float, sft: bool, loss_chunks: int = 1):
  """The unjitted (params, batch, key) -> metrics forward: the loss without its gradient."""
  loss = functools.partial(loss_fn, graphdef, mask_id=mask_id, eps=eps, sft=sft,
                           loss_chunks=loss_chunks)
  return lambda params, batch, key: loss(params, batch, key)[1]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Memory knobs of the update, from `config.step`; neither changes the maths."""
  microbatches: int = 1   # gradient accumulation: the batch runs in this many row slices
  loss_chunks: int = 1    # the LM head and loss run over this many slices of each sequence, so
                          # only one slice's logits [B, T / loss_chunks, vocab] live at a time

  def __post_init__(self):
    if self.microbatches < 1 or self.loss_chunks < 1:
      raise ConfigError('config.step.microbatches and loss_chunks must be at least 1.')
