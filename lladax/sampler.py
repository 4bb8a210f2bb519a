"""LLaDA's sampler (generate.py): semi-autoregressive blocks of masked tokens, unmasked by confidence.

The sequence is prompt + gen_length mask tokens. Blocks of block_length are decoded left to
right, each over steps / num_blocks steps; a step runs one forward pass, predicts every masked
token of the current block, and keeps the k most confident (`low_confidence`) or k random
(`random`) predictions, k being the block's masks split evenly over its steps (remainder to the
first steps). Positions are physical indices (as LLaDA, which has no position_ids); left padding
of the prompt is marked by `prompt_mask` and is never attended to.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax.config import ConfigError, choice, from_section

REMASKING = ('low_confidence', 'random')
MASK_PREDICTION = ('ban', 'allow')


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  gen_length: int = 128
  block_length: int = 32
  steps: int = 128
  temperature: float = 0.0          # 0: greedy argmax; > 0: Gumbel-max at this temperature
  cfg_scale: float = 0.0            # classifier-free guidance (prompt masked in the other copy)
  remasking: str = 'low_confidence'
  suppress_eos: bool = False        # never generate EOS (LLaDA's logits_eos_inf)
  suppress_eot: bool = False        # never generate <|eot_id|> either
  mask_prediction: str = 'ban'      # ban: the mask token is never predicted; allow: as LLaDA's
                                    # generate.py, a predicted mask leaves its position masked

  def __post_init__(self):
    choice(self.remasking, REMASKING, 'config.sample.remasking')
    choice(self.mask_prediction, MASK_PREDICTION, 'config.sample.mask_prediction')
    if self.gen_length <= 0 or self.block_length <= 0 or self.steps <= 0:
      raise ConfigError('config.sample.gen_length, block_length and steps must be positive.')
    if self.gen_length % self.block_length:
      raise ConfigError(f'config.sample.gen_length={self.gen_length} is not a multiple of '
                        f'block_length={self.block_length}.')
    if self.steps % self.num_blocks:
      raise ConfigError(f'config.sample.steps={self.steps} is not a multiple of the number of '
                        f'blocks ({self.num_blocks} = gen_length / block_length).')
    if self.steps > self.gen_length:
      raise ConfigError(f'config.sample.steps={self.steps} exceeds gen_length={self.gen_length}: '
                        'some steps would reveal nothing; use steps <= gen_length.')
    if self.temperature < 0:
      raise ConfigError('config.sample.temperature must be >= 0.')

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks


def from_config(config) -> SamplerConfig:
  """`config.sample` minus its `prompt` (job input, not a sampler setting)."""
  section = {k: v for k, v in config.sample.items() if k != 'prompt'}
  return from_section(SamplerConfig, section, 'config.sample')


def transfer_schedule(block_length: int, steps_per_block: int) -> np.ndarray:
  """Tokens revealed at each step of a block: an even split, the remainder to the first steps."""
  base, rem = divmod(block_length, steps_per_block)
  return base + (np.arange(steps_per_block) < rem).astype(np.int32)


def gumbel(key: jax.Array, shape) -> jax.Array:
  """Standard Gumbel noise whose tail is not cut short by float32 uniforms.

  LLaDA draws it in float64 because low-precision noise truncates the Gumbel tail and skews
  sampling. Here the uniform has 46 random bits (exact near 0 in float32), so the largest
  attainable noise is ~32 instead of ~16 with a plain float32 uniform, without enabling x64.
  """
  bits = jax.random.bits(key, (2,) + tuple(shape), jnp.uint32)
  u = ((bits[0] >> 9).astype(jnp.float32) * 2.0**-23 + (bits[1] >> 9).astype(jnp.float32) * 2.0**-46
       + 2.0**-47)
  u = jnp.minimum(u, 1.0 - 2.0**-24)
  return -jnp.log(-jnp.log1p(-u))


WindowFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def sample(window_fn: WindowFn, prompt: jax.Array, key: jax.Array, cfg: SamplerConfig, *,
           mask_id: int, prompt_mask: jax.Array | None = None,
           suppress_ids: tuple[int, ...] = ()) -> jax.Array:
  """Decodes cfg.gen_length tokens after `prompt` [B, P]; returns [B, P + gen_length].

  window_fn(tokens, positions, segment_ids, start) returns the logits of positions
  [start, start + block_length) for the full sequence; it is called exactly cfg.steps times.
  """
  b, plen = prompt.shape
  total = plen + cfg.gen_length
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt.shape, bool)
  x = jnp.concatenate([prompt, jnp.full((b, cfg.gen_length), mask_id, prompt.dtype)], axis=1)
  segment_ids = jnp.concatenate([prompt_mask, jnp.ones((b, cfg.gen_length), bool)], 1)
  segment_ids = segment_ids.astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (b, total))
  is_prompt = jnp.arange(total) < plen
  schedule = jnp.asarray(transfer_schedule(cfg.block_length, cfg.steps_per_block))
  spb, bl = cfg.steps_per_block, cfg.block_length

  def step(i, carry):
    x, key = carry
    key, key_noise = jax.random.split(key)
    start = plen + (i // spb) * bl
    if cfg.cfg_scale > 0:
      uncond = jnp.where(is_prompt[None] & (segment_ids > 0), mask_id, x)
      both = window_fn(jnp.concatenate([x, uncond]), jnp.concatenate([positions, positions]),
                       jnp.concatenate([segment_ids, segment_ids]), start)
      cond, un = both[:b], both[b:]
      logits = un + (cfg.cfg_scale + 1) * (cond - un)
    else:
      logits = window_fn(x, positions, segment_ids, start)
    # The mask token is never a valid prediction: choosing it would leave a mask in the output.
    banned = jnp.asarray((mask_id,) + tuple(suppress_ids))
    logits = logits.astype(jnp.float32).at[..., banned].set(-jnp.inf)
    if cfg.temperature > 0:
      x0 = jnp.argmax(logits + cfg.temperature * gumbel(key_noise, logits.shape), axis=-1)
    else:
      x0 = jnp.argmax(logits, axis=-1)
    if cfg.remasking == 'low_confidence':
      probs = jax.nn.softmax(logits, axis=-1)
      confidence = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
    else:
      confidence = jax.random.uniform(jax.random.fold_in(key_noise, 1), x0.shape)
    window = jax.lax.dynamic_slice_in_dim(x, start, bl, axis=1)
    still_masked = window == mask_id
    confidence = jnp.where(still_masked, confidence, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-confidence, axis=1, stable=True), axis=1, stable=True)
    reveal = (rank < schedule[i % spb]) & still_masked
    window = jnp.where(reveal, x0.astype(x.dtype), window)
    return jax.lax.dynamic_update_slice_in_dim(x, window, start, axis=1), key

  x, _ = jax.lax.fori_loop(0, cfg.steps, step, (x, key))
  return x


def model_window_fn(model, block_length: int) -> WindowFn:
  """A WindowFn that runs the network but projects only the window through the LM head."""

  def window_fn(tokens, positions, segment_ids, start):
    hidden = model.hidden(tokens, positions, segment_ids)
    return model.logits(jax.lax.dynamic_slice_in_dim(hidden, start, block_length, axis=1))

  return window_fn


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg', 'mask_id', 'suppress_ids'))
def _generate(graphdef, state, prompt, prompt_mask, key, cfg, mask_id, suppress_ids):
  model = nnx.merge(graphdef, state)
  return sample(model_window_fn(model, cfg.block_length), prompt, key, cfg, mask_id=mask_id,
                prompt_mask=prompt_mask, suppress_ids=suppress_ids)


def generate(model, prompt: jax.Array, key: jax.Array, cfg: SamplerConfig,
             prompt_mask: jax.Array | None = None) -> jax.Array:
  """Samples from a LLaDA module; prompt [B, P] left-padded where prompt_mask is False."""
  mc = model.cfg
  suppress = tuple(i for flag, i in ((cfg.suppress_eos, mc.eos_token_id),
                                     (cfg.suppress_eot, mc.eot_token_id))
                   if flag and i is not None)
  graphdef, state = nnx.split(model)
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt.shape, bool)
  return _generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(prompt_mask), key, cfg,
                   mc.mask_token_id, suppress)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens [B, P], prompt_mask [B, P]) left-padded as LLaDA's batched generate."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    if p:
      tokens[i, width - len(p):] = p
      mask[i, width - len(p):] = True
  return tokens, mask


def strip_generation(ids, eos_ids: tuple[int, ...]) -> list[int]:
  """Generated ids up to the first end-of-sequence token."""
  out = []
  for i in ids:
    if int(i) in eos_ids:
      break
    out.append(int(i))
  return out
