"""The `auto` kernel, the default: the fastest kernel that fits, for the backend and mesh at hand.

Decided when the model is traced, from the platform being compiled for (the ambient mesh's, so an
ahead-of-time compile for a TPU topology on a CPU host picks the TPU kernel) and the mesh's
`context` axis:

  * a `context` axis of more than one device: ring attention, with the platform's kernel per step;
  * otherwise the platform's kernel: splash on TPU, flash_gpu on an NVIDIA GPU, blockwise on CPU
    and anything else.

Splash runs bfloat16 and float32 only (Mosaic cannot load float16 tiles: "Invalid vector type
for load"), so a float16 model, as the papers' evaluation wrappers run LLaDA, takes blockwise on
TPU, where XLA computes it without a cast the recipe did not ask for.

Every choice is memory-linear in length, so a 128K evaluation never builds the [T, S] scores the
`reference` kernel does (128 GiB per layer for LLaDA-8B at 32K); `reference` stays for tests.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from lladax.attention import ring, sharded

# platform -> (the per-device kernel, also the ring's step kernel; the dtypes it runs); what is
# not listed, or not in those dtypes, runs blockwise.
PLATFORM_KERNELS = {'tpu': ('splash', ('bfloat16', 'float32')),
                    'gpu': ('flash_gpu', ('bfloat16', 'float16', 'float32')),
                    'cuda': ('flash_gpu', ('bfloat16', 'float16', 'float32'))}
FALLBACK = 'blockwise'


def step_kernel(platform: str, dtype='bfloat16') -> str:
  """The kernel `auto` runs on one device (or per ring step) of `platform` for `dtype`."""
  name, dtypes = PLATFORM_KERNELS.get(platform, (FALLBACK, ()))
  if name not in ring.STEP_KERNELS or jnp.dtype(dtype).name not in dtypes:
    return FALLBACK
  return name


def resolve(platform: str, dtype='bfloat16', context_size: int = 1) -> str:
  """What `auto` runs, in words: 'blockwise', 'splash', 'ring(splash)', ..."""
  step = step_kernel(platform, dtype)
  return f'ring({step})' if context_size > 1 else step


@functools.cache
def _say(choice: str, platform: str) -> None:
  logging.info("attention kernel 'auto' runs %s on %s", choice, platform)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, scale: float, **options) -> jax.Array:
  """The `auto` kernel; options are the chosen kernel's tile sizes (block_q, block_kv)."""
  platform = sharded.platform()
  lay = sharded.layout(q, k)
  _say(resolve(platform, q.dtype, lay.context_size if lay else 1), platform)
  # The ring without a context axis is its step kernel, on the mesh or on one device.
  return ring.attention(q, k, v, q_segment_ids, kv_segment_ids, scale=scale,
                        step_kernel=step_kernel(platform, q.dtype), **options)
