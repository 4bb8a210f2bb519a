"""LLaDA as Flax NNX modules: embedding, L scanned pre-norm blocks, final RMSNorm, LM head.

Block (LLaDALlamaBlock):  x += attn_out(Attn(RoPE(q_proj h), RoPE(k_proj h), v_proj h)), h = attn_norm(x)
                          x += ff_out(silu(ff_proj h) * up_proj h),                    h = ff_norm(x)
Attention is bidirectional and restricted to each token's segment.

Every parameter carries `logical_axes` metadata ('vocab', 'embed', 'heads', 'kv_heads',
'head_dim', 'mlp', 'layers', 'norm'), so sharding is a rule table (lladax/sharding.py);
activations are pinned to the same table at block boundaries (sharding.constrain, a no-op
without an ambient mesh).
Block parameters are stacked on a leading 'layers' axis and run under jax.lax.scan.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lladax import remat, rope as rope_lib, sharding
from lladax.attention import attention
from lladax.model_config import DTYPES, ModelConfig


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """As LLaDA: statistics in float32, cast back to x.dtype, then multiplied by the weight."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return normed.astype(x.dtype) * weight.astype(x.dtype)


def _truncated_normal(key, shape, std, dtype):
  """Truncated at +-3 sigma; `std` broadcasts against `shape` (per-layer scales)."""
  return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)


def _param(value, *axes):
  return nnx.Param(value, logical_axes=axes)


class Blocks(nnx.Module):
  """All L blocks, parameters stacked on a leading 'layers' axis (mitchell initialisation)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    l, d, h, kh, hd, f = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim,
                          cfg.mlp_hidden_size)
    dt = DTYPES[cfg.param_dtype]
    # Mitchell init: output projections shrink with depth by 1/sqrt(2(l+1)).
    depth = 1.0 / jnp.sqrt(2.0 * jnp.arange(1, l + 1, dtype=jnp.float32))

    def init(shape, std, per_layer=False):
      if per_layer:
        std = (std * depth).reshape((l,) + (1,) * (len(shape) - 1))
      return _truncated_normal(rngs.params(), shape, std, dt)

    self.attn_norm = _param(jnp.ones((l, d), dt), 'layers', 'norm')
    self.q_proj = _param(init((l, d, h, hd), 1 / math.sqrt(d)), 'layers', 'embed', 'heads',
                         'head_dim')
    self.k_proj = _param(init((l, d, kh, hd), 1 / math.sqrt(d)), 'layers', 'embed', 'kv_heads',
                         'head_dim')
    self.v_proj = _param(init((l, d, kh, hd), 1 / math.sqrt(d)), 'layers', 'embed', 'kv_heads',
                         'head_dim')
    self.attn_out = _param(init((l, h, hd, d), 1 / math.sqrt(d), per_layer=True), 'layers', 'heads', 'head_dim',
                           'embed')
    self.ff_norm = _param(jnp.ones((l, d), dt), 'layers', 'norm')
    self.ff_proj = _param(init((l, d, f), 1 / math.sqrt(d)), 'layers', 'embed', 'mlp')
    self.up_proj = _param(init((l, d, f), 1 / math.sqrt(d)), 'layers', 'embed', 'mlp')
    self.ff_out = _param(init((l, f, d), 1 / math.sqrt(f), per_layer=True), 'layers', 'mlp', 'embed')


BLOCK_PARAMS = ('attn_norm', 'q_proj', 'k_proj', 'v_proj', 'attn_out', 'ff_norm', 'ff_proj',
                'up_proj', 'ff_out')


def block(p: dict, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
          cfg: ModelConfig, keys_values=None) -> jax.Array:
  """One LLaDA block on x [B, T, D] with this layer's parameters `p` (no 'layers' axis).

  `keys_values`, if given, maps this block's (k, v) to the (k, v, kv_segment_ids) its queries
  attend to: the cached sampler (lladax/sampler_cache.py) puts them into the prompt's cache."""
  dt = x.dtype
  w = {k: v.astype(dt) for k, v in p.items()}
  x = sharding.constrain(x, sharding.RESIDUAL)
  h = rms_norm(x, w['attn_norm'], cfg.rms_norm_eps)
  q = checkpoint_name(jnp.einsum('btd,dhk->bthk', h, w['q_proj']), 'query_proj')
  k = checkpoint_name(jnp.einsum('btd,dhk->bthk', h, w['k_proj']), 'key_proj')
  v = checkpoint_name(jnp.einsum('btd,dhk->bthk', h, w['v_proj']), 'value_proj')
  q = rope_lib.apply(q, positions, cfg.rope)
  k = rope_lib.apply(k, positions, cfg.rope)
  q = sharding.constrain(q, sharding.QUERY)
  k = sharding.constrain(k, sharding.KEY_VALUE)
  v = sharding.constrain(v, sharding.KEY_VALUE)
  kv_segment_ids = None
  if keys_values is not None:
    k, v, kv_segment_ids = keys_values(k, v)
  o = attention(q, k, v, segment_ids, kv_segment_ids, kernel=cfg.attention_kernel,
                **cfg.attention_kwargs)
  o = checkpoint_name(sharding.constrain(o, sharding.QUERY), 'context')
  x = x + jnp.einsum('bthk,hkd->btd', o, w['attn_out'])
  h = rms_norm(x, w['ff_norm'], cfg.rms_norm_eps)
  gate = jnp.einsum('btd,df->btf', h, w['ff_proj'])
  up = jnp.einsum('btd,df->btf', h, w['up_proj'])
  x = x + jnp.einsum('btf,fd->btd', jax.nn.silu(gate) * up, w['ff_out'])
  return sharding.constrain(x, sharding.RESIDUAL)


class LLaDA(nnx.Module):
  """The LLaDA mask predictor. Call with tokens [B, T] (and optionally positions and
  segment_ids [B, T], 0 = padding) to get float32 logits [B, T, vocab]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = DTYPES[cfg.param_dtype]
    std = 1 / math.sqrt(cfg.d_model)
    self.wte = _param(_truncated_normal(rngs.params(), (cfg.vocab_size, cfg.d_model), std, dt),
                      'vocab', 'embed')
    self.blocks = Blocks(cfg, rngs)
    self.ln_f = _param(jnp.ones((cfg.d_model,), dt), 'norm')
    if not cfg.weight_tying:
      self.lm_head = _param(
          _truncated_normal(rngs.params(), (cfg.d_model, cfg.vocab_size), std, dt), 'embed',
          'vocab')

  def hidden(self, tokens, positions=None, segment_ids=None) -> jax.Array:
    """Final-normed hidden states [B, T, D] in the compute dtype."""
    cfg = self.cfg
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)
    positions = sharding.constrain(positions, sharding.TOKENS)
    segment_ids = sharding.constrain(segment_ids, sharding.TOKENS)
    x = jnp.take(self.wte[...], tokens, axis=0).astype(DTYPES[cfg.dtype])
    x = sharding.constrain(x, sharding.RESIDUAL)
    params = {name: getattr(self.blocks, name)[...] for name in BLOCK_PARAMS}

    def layer(x, p):
      # Tie the per-token inputs to the layer input. Otherwise autodiff of the scan hoists all
      # that depends on them alone out of the loop and keeps it, e.g. an attention kernel's
      # per-tile segment masks for the whole sequence (O(T^2) memory: 1.4 TB per chip at 128K).
      pos, seg, x = jax.lax.optimization_barrier((positions, segment_ids, x))
      return block(p, x, pos, seg, cfg), None

    step = remat.wrap(layer, cfg.remat_policy)
    if cfg.scan_layers:
      x, _ = jax.lax.scan(step, x, params)
    else:
      for i in range(cfg.n_layers):
        x, _ = step(x, jax.tree.map(lambda a, i=i: a[i], params))
    return rms_norm(x, self.ln_f[...], cfg.rms_norm_eps)

  def logits(self, hidden: jax.Array) -> jax.Array:
    head = self.wte[...].T if self.cfg.weight_tying else self.lm_head[...]
    logits = jnp.einsum('btd,dv->btv', hidden, head.astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    return sharding.constrain(logits, sharding.LOGITS)

  def __call__(self, tokens, positions=None, segment_ids=None) -> jax.Array:
    return self.logits(self.hidden(tokens, positions, segment_ids))


def init(cfg: ModelConfig, seed: int = 0) -> LLaDA:
  return LLaDA(cfg, nnx.Rngs(params=seed))


def abstract(cfg: ModelConfig) -> LLaDA:
  """The model with ShapeDtypeStructs instead of arrays: for planning and checkpoint restore."""
  return nnx.eval_shape(lambda: LLaDA(cfg, nnx.Rngs(params=0)))


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """lladax parameter name ('wte', 'blocks.q_proj', ..., 'lm_head') -> stacked shape."""
  shaped = abstract(cfg)
  shapes = {'wte': shaped.wte.shape, 'ln_f': shaped.ln_f.shape}
  for name in BLOCK_PARAMS:
    shapes[f'blocks.{name}'] = getattr(shaped.blocks, name).shape
  if not cfg.weight_tying:
    shapes['lm_head'] = shaped.lm_head.shape
  return shapes
