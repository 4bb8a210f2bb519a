"""The one attention function every caller uses; kernels plug in behind it by name.

All kernels are bidirectional (no causal mask) and respect segment ids: a query attends only to
keys of its own segment, and segment 0 (padding) is never attended to.
"""
from __future__ import annotations

import math
from typing import Callable

import jax

from lladax.attention import all_gather, auto, blockwise, reference, ring, splash
from lladax.config import ConfigError

# name -> fn(q, k, v, q_segment_ids, kv_segment_ids, *, scale, **options) -> out
KERNELS: dict[str, Callable] = {
    'auto': auto.attention,               # the default: ring / splash / flash_gpu / blockwise
                                          # by platform and mesh (see auto.py); block_q, block_kv
    'reference': reference.attention,     # dense O(T*S) oracle, for tests and short sequences
    'blockwise': blockwise.attention,     # flash-style XLA, any backend; block_q, block_kv
    'ring': ring.attention,               # ring over `context`; block_q, block_kv, step_kernel
    'all_gather': all_gather.attention,   # K/V gathered over `context`; inner, block sizes
    'splash': splash.attention,           # Pallas TPU (interpret elsewhere); block_q, block_kv,
                                          # interpret
}

_BLOCKS = {'block_q': int, 'block_kv': int}
# name -> {option: int (a positive one), bool, or the tuple of allowed strings}: what each kernel
# accepts, so a misspelt or zero option fails at start-up rather than inside a compiled step.
OPTIONS: dict[str, dict] = {
    'auto': _BLOCKS,
    'reference': {},
    'blockwise': _BLOCKS,
    'ring': {**_BLOCKS, 'step_kernel': ring.STEP_KERNELS, 'interpret': bool},
    'all_gather': {**_BLOCKS, 'inner': all_gather.INNER, 'interpret': bool},
    'splash': {**_BLOCKS, 'interpret': bool},
}
# Options that a kernel accepts only with a splash inner step: (option, switch, its value).
_SPLASH_ONLY = {'ring': ('interpret', 'step_kernel', 'splash'),
                'all_gather': ('interpret', 'inner', 'splash')}


def _check_value(kernel: str, name: str, value, kind, where: str) -> None:
  if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
    raise ConfigError(f'{where} sets {name}={value!r} for the {kernel!r} kernel; it must be a '
                      'positive integer (a tile size in tokens, e.g. 512).')
  if kind is bool and not isinstance(value, bool):
    raise ConfigError(f'{where} sets {name}={value!r} for the {kernel!r} kernel; it must be '
                      'True or False.')
  if isinstance(kind, tuple) and value not in kind:
    raise ConfigError(f'{where} sets {name}={value!r} for the {kernel!r} kernel; choose one of '
                      f'{", ".join(kind)}.')


def check_options(kernel: str, options: dict, where: str = 'config.model.attention_options'
                  ) -> None:
  """ConfigError naming the first option that `kernel` does not take or whose value is wrong."""
  known = OPTIONS[kernel]
  for name, value in options.items():
    if name not in known:
      takes = f'takes {", ".join(known)}' if known else 'takes no options'
      raise ConfigError(f'{where} sets {name!r}, which the {kernel!r} attention kernel does not '
                        f'know; it {takes}.')
    _check_value(kernel, name, value, known[name], where)
  option, switch, needed = _SPLASH_ONLY.get(kernel, (None, None, None))
  if option in options and options.get(switch) != needed:
    raise ConfigError(f'{where} sets {option!r}, which the {kernel!r} kernel uses only with '
                      f'{switch}={needed}; add {switch}={needed} or drop {option}.')


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array | None = None, *, kernel: str = 'auto',
              scale: float | None = None, **options) -> jax.Array:
  """Bidirectional multi-head attention over packed sequences.

  q: [B, T, H, D]; k, v: [B, S, KH, D] with H % KH == 0 (grouped-query attention when KH < H).
  q_segment_ids: [B, T] int, 1..n per document and 0 for padding; kv_segment_ids: [B, S]
  (defaults to q_segment_ids, the self-attention case).
  options: settings of the chosen kernel (block sizes and the like; see KERNELS).
  """
  if kernel not in KERNELS:
    raise ValueError(f'unknown attention kernel {kernel!r}; available: {", ".join(sorted(KERNELS))}')
  if q.shape[2] % k.shape[2]:
    raise ValueError(f'{q.shape[2]} query heads do not divide into {k.shape[2]} key/value heads')
  if kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  return KERNELS[kernel](q, k, v, q_segment_ids, kv_segment_ids, scale=scale, **options)
