"""AdamW with warm-up, a decay schedule and global-norm clipping, from `config.optim`."""
from __future__ import annotations

import dataclasses
import math

import jax
import optax

from lladax.config import ConfigError, choice

SCHEDULES = ('constant', 'cosine', 'linear')


# field -> (low, high, low excluded, what a valid value is): the range a setting must lie in.
_RANGES = {
    'learning_rate': (0, math.inf, True, 'a positive, finite peak learning rate such as 3e-4'),
    'warmup_steps': (0, math.inf, False, '0 (no warm-up) or a number of steps'),
    'decay_steps': (0, math.inf, False, '0 or a number of steps'),
    'final_lr_fraction': (0, math.inf, False, 'the fraction of the peak to decay to, e.g. 0.1'),
    'weight_decay': (0, math.inf, False, '0 (none) or a finite decay such as 0.1'),
    'b1': (0, 1, False, "Adam's first-moment decay, e.g. 0.9"),
    'b2': (0, 1, False, "Adam's second-moment decay, e.g. 0.95"),
    'eps': (0, math.inf, True, 'a small positive constant such as 1e-8'),
    'clip_norm': (0, math.inf, False, '0 (no clipping) or a finite gradient norm such as 1.0'),
}


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
    for name, (low, high, open_low, what) in _RANGES.items():
      value = getattr(self, name)
      above = value > low if open_low else value >= low
      # Written so that nan fails every test: it compares false with everything.
      if not (above and value < high):
        raise ConfigError(f'config.optim.{name}={value} is outside {"(" if open_low else "["}'
                          f'{low}, {high}); set {what}.')
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
