"""The one attention function every caller uses; kernels plug in behind it by name.

All kernels are bidirectional (no causal mask) and respect segment ids: a query attends only to
keys of its own segment, and segment 0 (padding) is never attended to.
"""
from __future__ import annotations

import math
from typing import Callable

import jax

from lladax.attention import all_gather, auto, blockwise, flash_gpu, reference, ring, splash
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
    'flash_gpu': flash_gpu.attention,     # Pallas Triton (NVIDIA GPU; interpret elsewhere);
                                          # block_q, block_kv, interpret, num_warps, num_stages
}

_BLOCKS = {'block_q': int, 'block_kv': int}
_TRITON = {'interpret': bool, 'num_warps': int, 'num_stages': int}
# name -> {option: int (a positive one), bool, or the tuple of allowed strings}: what each kernel
# accepts, so a misspelt or zero option fails at start-up rather than inside a compiled step.
OPTIONS: dict[str, dict] = {
    'auto': _BLOCKS,
    'reference': {},
    'blockwise': _BLOCKS,
    'ring': {**_BLOCKS, 'step_kernel': ring.STEP_KERNELS, **_TRITON},
    'all_gather': {**_BLOCKS, 'inner': all_gather.INNER, **_TRITON},
    'splash': {**_BLOCKS, 'interpret': bool},
    'flash_gpu': {**_BLOCKS, **_TRITON},
}
# Options that a kernel accepts only with some Pallas inner step: switch, {option: its values}.
_PALLAS_ONLY = {'interpret': ('splash', 'flash_gpu'), 'num_warps': ('flash_gpu',),
                'num_stages': ('flash_gpu',)}
_STEP_ONLY = {'ring': ('step_kernel', _PALLAS_ONLY), 'all_gather': ('inner', _PALLAS_ONLY)}


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
  switch, only = _STEP_ONLY.get(kernel, (None, {}))
  for option, needed in only.items():
    if option in options and options.get(switch) not in needed:
      with_ = ' or '.join(f'{switch}={n}' for n in needed)
      raise ConfigError(f'{where} sets {option!r}, which the {kernel!r} kernel uses only with '
                        f'{with_}; add {switch}={needed[0]} or drop {option}.')


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
