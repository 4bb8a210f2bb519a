"""AdamW with warm-up, a decay schedule and global-norm clipping, from `config.optim`."""
from __future__ import annotations

import dataclasses

import jax
import optax

from lladax.config import ConfigError, choice

SCHEDULES = ('constant', 'cosine', 'linear')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 3e-4
  warmup_steps: int = 0
  schedule: str = 'constant'   # after warm-up: constant | cosine | linear (to final_lr_fraction)
  decay_steps: int = 0         # length of the cosine/linear decay after warm-up
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.1    # applied to matrices only, not to norm weights
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0       # 0 disables clipping

  def __post_init__(self):
    choice(self.schedule, SCHEDULES, 'config.optim.schedule')
    if self.learning_rate <= 0:
      raise ConfigError('config.optim.learning_rate must be positive.')
    if self.schedule != 'constant' and self.decay_steps <= 0:
      raise ConfigError(f'config.optim.schedule={self.schedule!r} needs config.optim.decay_steps '
                        '> 0 (the number of steps to decay over).')


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
  peak, final = cfg.learning_rate, cfg.learning_rate * cfg.final_lr_fraction
  if cfg.schedule == 'constant':
    after = optax.constant_schedule(peak)
  elif cfg.schedule == 'cosine':
    after = optax.cosine_decay_schedule(peak, cfg.decay_steps, alpha=cfg.final_lr_fraction)
  else:
    after = optax.linear_schedule(peak, final, cfg.decay_steps)
  if cfg.warmup_steps <= 0:
    return after
  warmup = optax.linear_schedule(peak / max(cfg.warmup_steps, 1), peak, cfg.warmup_steps - 1)
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def adamw(cfg: OptimConfig) -> optax.GradientTransformation:
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  parts.append(optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
