"""The cached sampler for long prompts: the network runs over the decoded tokens only.

An approximation of LLaDA's sampler (lladax/sampler.py), after Fast-dLLM's prefix and dual
caches: a full forward pass stores every layer's keys and values (after RoPE) for the whole
sequence, and each step then runs the network only over a window of the sequence, whose queries
attend to the cache with the window's own keys and values written over their positions. The
prompt therefore no longer sees the answer change between refreshes, which bidirectional
attention would let it do: that is the approximation.

  config.sample.cache = 'none'     the exact sampler (the default everywhere)
                        'prompt'   the window is the generated region (gen_length tokens)
                        'dual'     the window is the current block; the cache holds the prompt
                                   and the other blocks (Fast-dLLM's dual cache)
  config.sample.cache_refresh = 'generation'  one full pass, before the first step ('prompt' only:
                                              with 'dual' the decoded blocks would never be seen)
                                'block'       one at the first step of every block
                                'step'        one at every step: as exact as the uncached
                                              sampler, and slower; for tests

config.sample.cache_recompute = N recomputes the prompt's last N tokens at every step with the
window (the window starts N tokens earlier), so that a question at the end of the prompt, which
the answer's tokens read, sees them as they are decoded.

With 'dual' only the current block's masks are candidates (a mask left in an earlier block by
mask_prediction='allow' stays masked); 'prompt' keeps the uncached sampler's candidates and its
random streams. A prompt that holds mask tokens (infilling) is refused: its positions are outside
the window. Shapes are static: the window has a fixed width and moves by dynamic slices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lladax import model as model_lib
from lladax.config import ConfigError, choice
from lladax.model_config import DTYPES

CACHES = ('none', 'prompt', 'dual')
REFRESH = ('generation', 'block', 'step')


def check(cache: str, refresh: str, recompute: int) -> None:
  """ConfigError for a cache setting the sampler cannot run."""
  choice(cache, CACHES, 'config.sample.cache')
  choice(refresh, REFRESH, 'config.sample.cache_refresh')
  if recompute < 0:
    raise ConfigError(f'config.sample.cache_recompute={recompute} is negative; use 0 or a number '
                      'of prompt tokens.')
  if recompute and cache == 'none':
    raise ConfigError(f'config.sample.cache_recompute={recompute} applies only with a cache; set '
                      "config.sample.cache='prompt' or 'dual', or cache_recompute=0.")
  if cache == 'dual' and refresh == 'generation':
    raise ConfigError("config.sample.cache='dual' with cache_refresh='generation' would never let "
                      "a step see the blocks decoded before it; use cache_refresh='block'.")


def check_prompt(infill: int) -> None:
  if infill:
    raise ConfigError('config.sample.cache cannot decode a prompt that holds mask tokens '
                      "(infilling): its masks lie outside the cached window; use cache='none'.")


def empty_cache(model, batch: int, length: int):
  """Zeroed keys and values [L, B, T, KH, head_dim] in the compute dtype."""
  c = model.cfg
  shape = (c.n_layers, batch, length, c.kv_heads, c.head_dim)
  zeros = jnp.zeros(shape, DTYPES[c.dtype])
  return zeros, zeros


def forward(model, tokens, positions, segment_ids, cache, start, kv_segment_ids, emit: bool):
  """(hidden [B, W, D], new cache or None): the network over the window tokens [B, W] that
  starts at `start`, its queries attending to `cache` (keys, values [L, B, T, KH, hd]) with the
  window's own keys and values written at [start, start + W). `emit` (static) returns the cache
  so updated; a window over the whole sequence (start 0) makes a fresh cache."""
  cfg = model.cfg
  x = jnp.take(model.wte[...], tokens, axis=0).astype(DTYPES[cfg.dtype])
  params = {name: getattr(model.blocks, name)[...] for name in model_lib.BLOCK_PARAMS}

  def layer(x, xs):
    p, cached_k, cached_v = xs
    updated = []

    def keys_values(k, v):
      k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), start, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), start, axis=1)
      updated.append((k, v))   # the block calls this once, while this layer is traced
      return k, v, kv_segment_ids

    x = model_lib.block(p, x, positions, segment_ids, cfg, keys_values)
    return x, updated[0] if emit else None

  x, new = jax.lax.scan(layer, x, (params, *cache))
  return model_lib.rms_norm(x, model.ln_f[...], cfg.rms_norm_eps), new


def sample(model, prompt, key, cfg, *, mask_id: int, prompt_mask, banned: tuple[int, ...],
           defer_ids: tuple[int, ...], uncond_hidden):
  """The cached counterpart of sampler.sample for a LLaDA module (no infilling); `banned` are
  the ids never predicted and `uncond_hidden` the prompt positions the unconditional copy of
  classifier-free guidance masks. Returns [B, P + gen_length]."""
  from lladax import sampler  # sampler dispatches here; importing it at the top would cycle

  b, plen = prompt.shape
  gen, bl, spb, nb = cfg.gen_length, cfg.block_length, cfg.steps_per_block, cfg.num_blocks
  total = plen + gen
  x = jnp.concatenate([prompt, jnp.full((b, gen), mask_id, prompt.dtype)], axis=1)
  segment_ids = jnp.concatenate([prompt_mask, jnp.ones((b, gen), bool)], 1).astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (b, total))
  guided = cfg.cfg_scale > 0
  if guided:
    positions, segment_ids = (jnp.concatenate([a, a]) for a in (positions, segment_ids))

  def inputs(x):
    return jnp.concatenate([x, jnp.where(uncond_hidden, mask_id, x)]) if guided else x

  schedule = jnp.asarray(sampler.transfer_schedule(bl, spb))
  # The prompt's last `lead` tokens (a NIAH prompt's question) are recomputed with the window.
  lead = min(cfg.cache_recompute, plen)
  width = (gen if cfg.cache == 'prompt' else bl) + lead
  # The LM head's part of the window: the current block, or with 'allow' (and the generated
  # region as window) every block up to it, one block at a time as the uncached sampler does.
  chunked = cfg.cache == 'prompt' and cfg.mask_prediction == 'allow'

  def window_of(a, start):
    return jax.lax.dynamic_slice_in_dim(a, start, width, axis=1)

  def refresh(x, cache):
    return forward(model, inputs(x), positions, segment_ids, cache, 0, segment_ids, True)[1]

  def predict(hidden, candidate, key):
    def run(_):
      x0, confidence = sampler._predictions(sampler._guided(model.logits(hidden), cfg, b), key,
                                            cfg, banned, defer_ids)
      return x0.astype(jnp.int32), confidence

    def skip(_):
      return jnp.zeros(candidate.shape, jnp.int32), jnp.zeros(candidate.shape, jnp.float32)

    return jax.lax.cond(jnp.any(candidate), run, skip, None)

  def step(i, carry):
    x, key, cache = carry
    key, key_noise = jax.random.split(key)
    block = i // spb
    if cfg.cache_refresh == 'step':
      cache = refresh(x, cache)
    else:
      first = i == 0 if cfg.cache_refresh == 'generation' else i % spb == 0
      cache = jax.lax.cond(first, refresh, lambda x, c: c, x, cache)
    start = (plen if cfg.cache == 'prompt' else plen + block * bl) - lead
    hidden, _ = forward(model, window_of(inputs(x), start), window_of(positions, start),
                        window_of(segment_ids, start), cache, start, segment_ids, False)
    window = window_of(x, start)
    if chunked:
      window, hidden = window[:, lead:], hidden[:, lead:]
      candidate = (window == mask_id) & (jnp.arange(gen) < (block + 1) * bl)[None]
      b2, d = hidden.shape[0], hidden.shape[-1]
      x0, confidence = jax.lax.map(
          lambda a: predict(*a),
          (hidden.reshape(b2, nb, bl, d).swapaxes(0, 1),
           candidate.reshape(b, nb, bl).swapaxes(0, 1), jax.random.split(key_noise, nb)))
      x0, confidence = (a.swapaxes(0, 1).reshape(b, gen) for a in (x0, confidence))
      reveal = sampler._reveal(confidence, candidate, schedule[i % spb])
      window = jnp.where(reveal, x0.astype(x.dtype), window)
      return jax.lax.dynamic_update_slice_in_dim(x, window, start + lead, axis=1), key, cache
    offset = lead + (block * bl if cfg.cache == 'prompt' else 0)   # the current block
    current = jax.lax.dynamic_slice_in_dim(window, offset, bl, axis=1)
    logits = model.logits(jax.lax.dynamic_slice_in_dim(hidden, offset, bl, axis=1))
    x0, confidence = sampler._predictions(sampler._guided(logits, cfg, b), key_noise, cfg,
                                          banned, defer_ids)
    reveal = sampler._reveal(confidence, current == mask_id, schedule[i % spb])
    current = jnp.where(reveal, x0.astype(x.dtype), current)
    return jax.lax.dynamic_update_slice_in_dim(x, current, start + offset, axis=1), key, cache

  cache = empty_cache(model, b * (2 if guided else 1), total)
  x, _, _ = jax.lax.fori_loop(0, cfg.steps, step, (x, key, cache))
  return x


def supports(net) -> bool:
  """Whether `net` is a module the cached sampler can run (a LLaDA module, not a function)."""
  return isinstance(net, nnx.Module) and hasattr(net, 'blocks') and hasattr(net, 'cfg')
