"""The sampler of LLaDA's own generate.py (lladax/generate.py is the job that calls it):
semi-autoregressive blocks of masked tokens, unmasked by confidence.

The sequence is prompt + gen_length mask tokens. Blocks of block_length are decoded left to
right, each over steps / num_blocks steps, k tokens per step: the block's masks split evenly over
its steps (remainder to the first steps). A step runs one forward pass, predicts x0 (argmax, or
Gumbel-max at a temperature) at every candidate position and writes the k most confident
(`low_confidence`: the softmax probability of x0) or k random (`random`) candidates.

The candidates are, as in LLaDA's generate.py, every masked position before the current block's
end: the block's own masks, masks a prompt contains (infilling) and, with mask_prediction='allow',
masks left by earlier blocks. With 'allow' the network may predict the mask token itself; writing
it leaves that position masked, to be filled at a later step (or left masked in the output, as
LLaDA's generate.py may). With 'ban' (lladax's default) the mask token is never predicted, so a
prompt without masks ends fully decoded. Either way each block reveals as many tokens as it had
masks at its start, so when the prompt holds masks as many masks as it held stay somewhere in
the sequence (LLaDA's schedule). Ties in confidence go to the lowest position (torch.topk in
LLaDA's code leaves the order of ties unspecified).

Positions are physical indices (as LLaDA, which has no position_ids); left padding of the prompt
is marked by `prompt_mask`: never attended to and never a candidate.

Cost: the network runs over the whole sequence each step, but the LM head only over positions
that can be candidates. When nothing but the current block can hold a mask ('ban' and a prompt
without masks) that is the current window; otherwise the prompt's mask positions (their count
per row is a static, bucketed shape) and the generated region, one block at a time and only for
blocks that still hold a candidate. With config.sample.cache (off by default, approximate) the
network runs over the decoded window only, against cached keys and values of the rest
(lladax/sampler_cache.py).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import sampler_cache
from lladax.config import ConfigError, choice

REMASKING = ('low_confidence', 'random')
MASK_PREDICTION = ('ban', 'allow')
# The unconditional copy of classifier-free guidance masks the prompt's tokens ('prompt_tokens',
# LLaDA's generate.py: prompt masks it has filled stay visible) or every prompt position
# ('prompt', LLaDA's eval_llada.py get_logits).
UNCOND = ('prompt_tokens', 'prompt')


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
  # LLaDA's confidence_eos_eot_inf: EOS / EoT may still be predicted, but their confidence is
  # taken from a softmax in which their logits are -inf, so they are written last (confidence 0)
  # and every other confidence is renormalised without them. Exactly as LLaDA's generate.py, at
  # temperature 0 both EOS and EoT are deferred; at temperature > 0 only EoT is (its chained
  # assignment hits EOS in the Gumbel-noised copy, which no longer feeds the confidence).
  # No effect with remasking='random'.
  defer_eos_eot: bool = False
  # The cached sampler for long prompts (lladax/sampler_cache.py): 'none' (exact), 'prompt' or
  # 'dual', its keys and values recomputed once per 'generation', 'block' or 'step', and the
  # prompt's last cache_recompute tokens at every step. Approximate:
  # an eval job records any cache as a deviation from its protocol.
  cache: str = 'none'
  cache_refresh: str = 'block'
  cache_recompute: int = 0          # the prompt's last tokens recomputed at every step

  def __post_init__(self):
    choice(self.remasking, REMASKING, 'config.sample.remasking')
    sampler_cache.check(self.cache, self.cache_refresh, self.cache_recompute)
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


def settings(cfg: SamplerConfig) -> dict:
  """cfg as the results files record it; the cache settings only when a cache is on, so that
  results made before the cache existed still resume."""
  out = dataclasses.asdict(cfg)
  if cfg.cache == 'none':
    del out['cache'], out['cache_refresh'], out['cache_recompute']
  return out


def transfer_schedule(block_length: int, steps_per_block: int) -> np.ndarray:
  """Tokens revealed at each step of a block: an even split, the remainder to the first steps."""
  base, rem = divmod(block_length, steps_per_block)
  return base + (np.arange(steps_per_block) < rem).astype(np.int32)


def deferred_ids(cfg: SamplerConfig, eos_id: int | None, eot_id: int | None) -> tuple[int, ...]:
  """The ids whose confidence defer_eos_eot zeroes: EOS and EoT at temperature 0, EoT alone at
  temperature > 0 (LLaDA's generate.py: `logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -inf`
  is one tensor only when add_gumbel_noise returned its input, i.e. at temperature 0)."""
  if not cfg.defer_eos_eot:
    return ()
  ids = (eos_id, eot_id) if cfg.temperature == 0 else (eot_id,)
  return tuple(sorted({i for i in ids if i is not None}))


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


class Network(Protocol):
  """What the sampler needs of a mask predictor (a lladax LLaDA module is one)."""

  def hidden(self, tokens, positions, segment_ids) -> jax.Array: ...   # [B, T, D]

  def logits(self, hidden) -> jax.Array: ...                           # [B, n, D] -> [B, n, V]


def _predictions(logits, key, cfg: SamplerConfig, banned, deferred):
  """(x0 [B, n], confidence [B, n]) from logits [B, n, V], as one step of LLaDA's generate.py."""
  logits = logits.astype(jnp.float32)
  if banned:
    logits = logits.at[..., jnp.asarray(banned)].set(-jnp.inf)
  if cfg.temperature > 0:
    x0 = jnp.argmax(logits + cfg.temperature * gumbel(key, logits.shape), axis=-1)
  else:
    x0 = jnp.argmax(logits, axis=-1)
  if cfg.remasking == 'random':
    return x0, jax.random.uniform(jax.random.fold_in(key, 1), x0.shape)
  if deferred:
    logits = logits.at[..., jnp.asarray(deferred)].set(-jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  return x0, jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]


def _guided(logits, cfg: SamplerConfig, b: int):
  """The conditional rows' logits, guided by the unconditional ones when cfg_scale > 0."""
  if cfg.cfg_scale <= 0:
    return logits
  cond, un = logits[:b], logits[b:]
  return un + (cfg.cfg_scale + 1) * (cond - un)


def _reveal(confidence, candidate, k):
  """The k most confident candidates of each row, ties to the lowest position."""
  confidence = jnp.where(candidate, confidence, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-confidence, axis=1, stable=True), axis=1, stable=True)
  return (rank < k) & candidate


def sample(net: Network | WindowFn, prompt: jax.Array, key: jax.Array, cfg: SamplerConfig, *,
           mask_id: int, prompt_mask: jax.Array | None = None,
           suppress_ids: tuple[int, ...] = (), defer_ids: tuple[int, ...] = (),
           infill: int = 0, uncond: str = 'prompt_tokens') -> jax.Array:
  """Decodes cfg.gen_length tokens after `prompt` [B, P]; returns [B, P + gen_length].

  `net` is a Network, or for the window path only a WindowFn: window_fn(tokens, positions,
  segment_ids, start) returning the logits of positions [start, start + block_length).
  `infill` (static) is at least the largest number of mask tokens in a row's prompt: 0 with
  mask_prediction='ban' takes the window path, anything else the general one (see the module
  docstring). `suppress_ids` are never predicted; `defer_ids` get confidence from a softmax
  without them (see SamplerConfig.defer_eos_eot); `uncond` is one of UNCOND.
  """
  choice(uncond, UNCOND, 'sampler uncond')
  b, plen = prompt.shape
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt.shape, bool)
  x = jnp.concatenate([prompt, jnp.full((b, cfg.gen_length), mask_id, prompt.dtype)], axis=1)
  segment_ids = jnp.concatenate([prompt_mask, jnp.ones((b, cfg.gen_length), bool)], 1)
  segment_ids = segment_ids.astype(jnp.int32)
  total = plen + cfg.gen_length
  positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (b, total))
  # The prompt positions the unconditional copy masks (padding stays padding: never attended).
  hidden_prompt = (jnp.arange(total) < plen)[None] & (segment_ids > 0)
  if uncond == 'prompt_tokens':
    hidden_prompt &= x != mask_id
  banned = tuple(suppress_ids) + ((mask_id,) if cfg.mask_prediction == 'ban' else ())
  banned, defer_ids = tuple(sorted(set(banned))), tuple(sorted(set(defer_ids)))
  if cfg.cache != 'none':
    if not sampler_cache.supports(net):
      raise ValueError(f'config.sample.cache={cfg.cache!r} needs a LLaDA module as the network, '
                       "not a window function; pass the model or use cache='none'.")
    sampler_cache.check_prompt(infill)
    return sampler_cache.sample(net, prompt, key, cfg, mask_id=mask_id, prompt_mask=prompt_mask,
                                banned=banned, defer_ids=defer_ids, uncond_hidden=hidden_prompt)
  if cfg.cfg_scale > 0:
    positions, segment_ids = (jnp.concatenate([a, a]) for a in (positions, segment_ids))

  def inputs(x):
    if cfg.cfg_scale > 0:
      return jnp.concatenate([x, jnp.where(hidden_prompt, mask_id, x)])
    return x

  schedule = jnp.asarray(transfer_schedule(cfg.block_length, cfg.steps_per_block))
  spb, bl = cfg.steps_per_block, cfg.block_length
  if cfg.mask_prediction == 'ban' and infill == 0:
    window_fn = model_window_fn(net, bl) if hasattr(net, 'hidden') else net

    def window_step(i, carry):
      x, key = carry
      key, key_noise = jax.random.split(key)
      start = plen + (i // spb) * bl
      logits = _guided(window_fn(inputs(x), positions, segment_ids, start), cfg, b)
      x0, confidence = _predictions(logits, key_noise, cfg, banned, defer_ids)
      window = jax.lax.dynamic_slice_in_dim(x, start, bl, axis=1)
      reveal = _reveal(confidence, window == mask_id, schedule[i % spb])
      window = jnp.where(reveal, x0.astype(x.dtype), window)
      return jax.lax.dynamic_update_slice_in_dim(x, window, start, axis=1), key

    x, _ = jax.lax.fori_loop(0, cfg.steps, window_step, (x, key))
    return x

  if not hasattr(net, 'hidden'):
    raise ValueError('the sampler needs a network with hidden() and logits(), not a window '
                     'function, when the prompt has masks or mask_prediction is allow')
  nb, gen = cfg.num_blocks, cfg.gen_length
  rows = jnp.arange(b)[:, None]
  if infill:
    # Each row's prompt mask positions, padded with `total` (out of range: never written).
    find = lambda row: jnp.nonzero(row, size=infill, fill_value=total)[0]
    infill_at = jax.vmap(find)((prompt == mask_id) & prompt_mask).astype(jnp.int32)
    gather_at = jnp.minimum(infill_at, total - 1)

  def predict(hidden, candidate, key):
    """x0 and confidence of one part; the LM head runs only if the part has a candidate."""

    def run(_):
      x0, confidence = _predictions(_guided(net.logits(hidden), cfg, b), key, cfg, banned,
                                    defer_ids)
      return x0.astype(jnp.int32), confidence

    def skip(_):
      return jnp.zeros(candidate.shape, jnp.int32), jnp.zeros(candidate.shape, jnp.float32)

    return jax.lax.cond(jnp.any(candidate), run, skip, None)

  def step(i, carry):
    x, key = carry
    key, key_noise = jax.random.split(key)
    end = (i // spb + 1) * bl  # the current block's end, relative to the generated region
    hidden = net.hidden(inputs(x), positions, segment_ids)
    b2, d = hidden.shape[0], hidden.shape[-1]
    generated = x[:, plen:]
    candidate = (generated == mask_id) & (jnp.arange(gen) < end)[None]
    chunks = hidden[:, plen:].reshape(b2, nb, bl, d).swapaxes(0, 1)
    x0, confidence = jax.lax.map(
        lambda a: predict(*a),
        (chunks, candidate.reshape(b, nb, bl).swapaxes(0, 1), jax.random.split(key_noise, nb)))
    x0, confidence = (a.swapaxes(0, 1).reshape(b, gen) for a in (x0, confidence))
    if infill:
      current = jnp.take_along_axis(x, gather_at, axis=1)
      in_prompt = (infill_at < total) & (current == mask_id)
      both_rows = jnp.concatenate([gather_at] * (b2 // b))
      px0, pconf = predict(jnp.take_along_axis(hidden, both_rows[..., None], axis=1), in_prompt,
                           jax.random.fold_in(key_noise, nb))
      candidate = jnp.concatenate([in_prompt, candidate], 1)
      x0, confidence = jnp.concatenate([px0, x0], 1), jnp.concatenate([pconf, confidence], 1)
    reveal = _reveal(confidence, candidate, schedule[i % spb])
    if infill:
      written = jnp.where(reveal[:, :infill], px0.astype(x.dtype), current)
      x = x.at[rows, infill_at].set(written, mode='drop')
      reveal, x0 = reveal[:, infill:], x0[:, infill:]
    generated = jnp.where(reveal, x0.astype(x.dtype), generated)
    return jnp.concatenate([x[:, :plen], generated], 1), key

  x, _ = jax.lax.fori_loop(0, cfg.steps, step, (x, key))
  return x


def model_window_fn(model, block_length: int) -> WindowFn:
  """A WindowFn that runs the network but projects only the window through the LM head."""

  def window_fn(tokens, positions, segment_ids, start):
    hidden = model.hidden(tokens, positions, segment_ids)
    return model.logits(jax.lax.dynamic_slice_in_dim(hidden, start, block_length, axis=1))

  return window_fn


def infill_bucket(n: int) -> int:
  """A static size for `n` prompt masks: 0, or the next power of two (few compiled shapes)."""
  return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg', 'mask_id', 'suppress_ids',
                                             'defer_ids', 'infill', 'uncond'))
def _generate(graphdef, state, prompt, prompt_mask, key, cfg, mask_id, suppress_ids, defer_ids,
              infill, uncond):
  model = nnx.merge(graphdef, state)
  return sample(model, prompt, key, cfg, mask_id=mask_id, prompt_mask=prompt_mask,
                suppress_ids=suppress_ids, defer_ids=defer_ids, infill=infill, uncond=uncond)


def generate(model, prompt: jax.Array, key: jax.Array, cfg: SamplerConfig,
             prompt_mask: jax.Array | None = None, uncond: str = 'prompt_tokens') -> jax.Array:
  """Samples from a LLaDA module; prompt [B, P] left-padded where prompt_mask is False. Mask
  tokens in the prompt are filled too (infilling)."""
  mc = model.cfg
  suppress = tuple(i for flag, i in ((cfg.suppress_eos, mc.eos_token_id),
                                     (cfg.suppress_eot, mc.eot_token_id))
                   if flag and i is not None)
  graphdef, state = nnx.split(model)
  prompt = jnp.asarray(prompt)
  prompt_mask = jnp.ones(prompt.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask)
  masks = int(jnp.max(jnp.sum((prompt == mc.mask_token_id) & prompt_mask, axis=1),
                      initial=0)) if prompt.size else 0
  return _generate(graphdef, state, prompt, prompt_mask, key, cfg, mc.mask_token_id, suppress,
                   deferred_ids(cfg, mc.eos_token_id, mc.eot_token_id), infill_bucket(masks),
                   uncond)


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
