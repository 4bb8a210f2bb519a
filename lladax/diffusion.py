"""Masked diffusion: the forward (masking) process, the training loss and LLaDA's likelihood bound.

Forward process (LLaDA GUIDELINES): per sequence t ~ U(0, 1), p = (1 - eps) t + eps, and each
maskable token is replaced by the mask id with probability p. The loss is the cross-entropy on
masked tokens weighted by 1/p, an upper bound on the negative log-likelihood.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

EPS = 1e-3


def forward_mask(key: jax.Array, tokens: jax.Array, mask_id: int, maskable: jax.Array,
                 eps: float = EPS) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Noises tokens [B, T]; `maskable` [B, T] excludes padding and (for SFT) the prompt.

  Returns (noisy tokens, masked [B, T] bool, p [B]): the mask probability of each row.
  """
  key_t, key_m = jax.random.split(key)
  t = jax.random.uniform(key_t, (tokens.shape[0],))
  p = (1.0 - eps) * t + eps
  masked = (jax.random.uniform(key_m, tokens.shape) < p[:, None]) & maskable
  return jnp.where(masked, mask_id, tokens), masked, p


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token cross-entropy [B, T] in float32, without materialising log-probabilities."""
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def loss(logits: jax.Array, targets: jax.Array, masked: jax.Array, p: jax.Array,
         real: jax.Array, answer: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """LLaDA's masked-diffusion loss and its metrics.

  Pre-training: sum over masked tokens of CE / p, divided by the number of real (non-padding)
  tokens in the batch. SFT (`answer` given, [B, T] bool): each row's sum is divided by its
  answer length (prompt excluded), then averaged over rows.
  """
  return reduce_loss(token_cross_entropy(logits, targets), jnp.argmax(logits, axis=-1) == targets,
                     masked, p, real, answer)


def reduce_loss(ce: jax.Array, correct: jax.Array, masked: jax.Array, p: jax.Array,
                real: jax.Array, answer: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """`loss` from per-token cross-entropies `ce` and argmax hits `correct` [B, T], for callers
  that compute those a slice at a time (the chunked LM head of the train step)."""
  weighted = jnp.where(masked, ce / p[:, None], 0.0)
  if answer is None:
    value = jnp.sum(weighted) / jnp.maximum(jnp.sum(real), 1)
  else:
    answer_len = jnp.maximum(jnp.sum(answer, axis=1), 1)
    value = jnp.mean(jnp.sum(weighted, axis=1) / answer_len)
  n_masked = jnp.sum(masked)
  metrics = {
      'loss': value,
      'masked_accuracy': jnp.sum(masked & correct) / jnp.maximum(n_masked, 1),
      'masked_ce': jnp.sum(jnp.where(masked, ce, 0.0)) / jnp.maximum(n_masked, 1),
      'masked_tokens': n_masked,
      'real_tokens': jnp.sum(real),
  }
  return value, metrics


def stratified_mask_counts(key: jax.Array, length: int, batch: int) -> jax.Array:
  """LLaDA's low-variance mask counts: k ~ U{1..L}, then `batch` evenly spread counts in 1..L."""
  k = jax.random.randint(key, (), 1, length + 1)
  spread = jnp.linspace(k.astype(jnp.float32), k + (batch - 1) * (length / batch), batch)
  counts = jnp.round(spread).astype(jnp.int32)
  return (counts - 1) % length + 1


def log_likelihood(logits_fn: Callable[[jax.Array], jax.Array], prompt: jax.Array,
                   answer: jax.Array, key: jax.Array, *, mask_id: int, mc_num: int = 128,
                   batch_size: int = 16, cfg_scale: float = 0.0,
                   score_all_masks: bool = False) -> jax.Array:
  """Monte Carlo estimate of log p(answer | prompt), as LLaDA's get_log_likelihood.py.

  logits_fn maps tokens [b, P + A] to logits [b, P + A, V]. Each of mc_num / batch_size
  iterations masks exactly l_i answer tokens in row i (stratified counts), never the prompt,
  and scores sum(CE / (l_i / A)) / batch_size. With cfg_scale > 0 the unconditional copy has its
  prompt masked and logits = un + (cfg + 1) (cond - un).

  score_all_masks: score every position that holds the mask token after noising, as LLaDA's code
  does (`perturbed_seq == mask_id`): a mask token the prompt or answer already held is scored too,
  its target being the mask token. False scores the noised answer positions only; the two differ
  only when the text holds mask tokens.
  """
  if mc_num % batch_size:
    raise ValueError(f'mc_num={mc_num} must be a multiple of batch_size={batch_size}')
  plen, alen = prompt.shape[0], answer.shape[0]
  seq = jnp.concatenate([prompt, answer])[None].repeat(batch_size, axis=0)
  is_prompt = jnp.arange(plen + alen) < plen

  def one(key):
    key_k, key_perm = jax.random.split(key)
    counts = stratified_mask_counts(key_k, alen, batch_size)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key_perm, (batch_size, alen)), axis=1),
                        axis=1)
    masked = jnp.concatenate([jnp.zeros((batch_size, plen), bool), ranks < counts[:, None]], 1)
    noisy = jnp.where(masked, mask_id, seq)
    if cfg_scale > 0:
      uncond = jnp.where(is_prompt[None], mask_id, noisy)
      both = logits_fn(jnp.concatenate([noisy, uncond]))
      cond, un = both[:batch_size], both[batch_size:]
      logits = un + (cfg_scale + 1) * (cond - un)
    else:
      logits = logits_fn(noisy)
    ce = token_cross_entropy(logits, seq)
    p = counts.astype(jnp.float32) / alen
    scored = (noisy == mask_id) if score_all_masks else masked
    return jnp.sum(jnp.where(scored, ce / p[:, None], 0.0)) / batch_size

  losses = jax.lax.map(one, jax.random.split(key, mc_num // batch_size))
  return -jnp.mean(losses)
