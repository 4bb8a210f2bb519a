"""Rotary position embeddings and the rules that choose their base. Pure functions only.

Scaling rules (see shared PAPERS.md section 1):
  none           the trained base b.
  ntk            LongLLaDA: d_crit = 2*ceil((d/2) * log_b(T_train / 2pi)),
                 lambda = b^-1 * (T_target / 2pi)^(d / d_crit), base = lambda * b.
  diffusion_ntk  UltraLLaDA: the same rule with the spans doubled (T_cap = 2 T_train,
                 T_Ecap = 2 T_target), because bidirectional attention trains relative
                 positions in [-(T-1), T-1]. The paper found d_crit = 73 better than the analytic 70.
  linear         position interpolation: positions scaled by T_train / T_target, base unchanged.
  theta          an explicit base.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

RULES = ('none', 'ntk', 'diffusion_ntk', 'linear', 'theta')


class RopeParams(NamedTuple):
  """What the network needs: the base and a multiplier applied to positions."""
  theta: float
  position_scale: float = 1.0


def critical_dim(base: float, head_dim: int, span: float) -> int:
  """Number of rotary dimensions whose period fits in `span` tokens (always even)."""
  return 2 * math.ceil((head_dim / 2) * math.log(span / (2 * math.pi), base))


def ntk_lambda(base: float, head_dim: int, train_span: float, target_span: float,
               d_crit: int | None = None, round_up: bool = False) -> float:
  """The factor lambda by which the base is multiplied so that `target_span` is covered."""
  if d_crit is None:
    d_crit = critical_dim(base, head_dim, train_span)
  lam = (target_span / (2 * math.pi)) ** (head_dim / d_crit) / base
  if round_up:
    # Small tolerance: the paper's 3.40 -> 4 must not become 5 through float noise at an integer.
    lam = float(math.ceil(lam - 1e-9))
  # Never shrink the base: a target inside the trained span needs no scaling.
  return max(lam, 1.0)


def resolve(rule: str, base: float, head_dim: int, train_length: int,
            target_length: int | None = None, d_crit: int | None = None,
            round_lambda: bool = False, theta: float | None = None) -> RopeParams:
  """The RoPE parameters that rule `rule` gives for a model trained at `train_length`."""
  if rule not in RULES:
    raise ValueError(f'unknown RoPE rule {rule!r}; choose one of {", ".join(RULES)}')
  if rule == 'none':
    return RopeParams(float(base))
  if rule == 'theta':
    if theta is None or theta <= 0:
      raise ValueError('the theta rule needs a positive explicit theta')
    return RopeParams(float(theta))
  if target_length is None or target_length <= 0:
    raise ValueError(f'the {rule} rule needs a positive target_length')
  if rule == 'linear':
    return RopeParams(float(base), min(1.0, train_length / target_length))
  spans = (2 * train_length, 2 * target_length) if rule == 'diffusion_ntk' else (
      train_length, target_length)
  lam = ntk_lambda(base, head_dim, *spans, d_crit=d_crit, round_up=round_lambda)
  return RopeParams(lam * base)


def inverse_frequencies(theta: float, head_dim: int) -> jax.Array:
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def angles(positions: jax.Array, params: RopeParams, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """cos and sin of shape positions.shape + (head_dim,), in float32 (rotate-half layout)."""
  pos = positions.astype(jnp.float32) * params.position_scale
  freqs = pos[..., None] * inverse_frequencies(params.theta, head_dim)
  freqs = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(freqs), jnp.sin(freqs)


def apply(x: jax.Array, positions: jax.Array, params: RopeParams) -> jax.Array:
  """Rotates x [..., T, H, D] by per-token positions [..., T]; float32 inside, x.dtype out."""
  head_dim = x.shape[-1]
  cos, sin = angles(positions, params, head_dim)
  cos, sin = cos[..., None, :], sin[..., None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)
