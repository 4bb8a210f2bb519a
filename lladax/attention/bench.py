"""Attention kernel benchmark: throughput and peak memory of each kernel against sequence length.

  python -m lladax.main --config configs/attention_bench.py
  python -m lladax.main --config configs/attention_bench.py --config.bench.max_seq_len=131072 \
      --config.bench.kernels='("blockwise","splash")' --config.workdir=/tmp/attention_bench

For each kernel and each sequence length (powers of two from min_seq_len up to max_seq_len, or
until the kernel no longer fits), one packed row layout is compiled once and timed: the forward
pass, and the forward plus backward pass (gradients of q, k and v). Throughput counts the
model FLOPs of bidirectional attention, 4*B*T*S*H*D forward and three times that for forward
plus backward (nothing halved for a causal mask, no credit for the backward's recomputation),
so the numbers compare across kernels and with MFU figures; with context > 1 they are for the
whole mesh. Peak memory is XLA's plan for the compiled program per device (arguments, outputs
and temporaries), read before it runs; a program whose plan exceeds the device's memory (or 80%
of host memory on CPU) is not run, and neither are longer sequences of that kernel.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lladax import files
from lladax.attention import KERNELS, attention
from lladax.config import ConfigError, choice, parse

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CONTEXT_KERNELS = ('ring', 'all_gather')   # only differ from blockwise/splash on a context mesh


def resolve(b: BenchConfig, platform: str) -> BenchConfig:
  """Fills the platform-dependent defaults: long sweeps in bfloat16 on accelerators, a short
  float32 one on CPU."""
  cpu = platform == 'cpu'
  return dataclasses.replace(
      b, max_seq_len=b.max_seq_len or (2048 if cpu else 131072),
      dtype=b.dtype or ('float32' if cpu else 'bfloat16'), kv_heads=b.kv_heads or b.heads)


def seq_lens(b: BenchConfig) -> list[int]:
  lens, n = [], b.min_seq_len
  while n <= b.max_seq_len:
    lens.append(n)
    n *= 2
  return lens


def flops(b: BenchConfig, seq_len: int) -> float:
  """Forward FLOPs of bidirectional attention over one batch: QK^T and PV, 2 FLOPs a MAC each."""
  return 4.0 * b.batch * seq_len * seq_len * b.heads * b.head_dim


def memory_limit() -> float:
  """Bytes one device may use: its reported limit, or 80% of host memory on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return float(stats['bytes_limit'])
  return 0.8 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def peak_bytes(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  # Some backends (CPU) report a peak_memory_in_bytes that leaves the temporaries out.
  planned = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
             m.temp_size_in_bytes)
  return float(max(planned, getattr(m, 'peak_memory_in_bytes', 0)))


def operands(b: BenchConfig, seq_len: int, sharding=None):
  rng = np.random.default_rng(0)
  dtype = DTYPES[b.dtype]
  def normal(heads):
    x = jnp.asarray(rng.standard_normal((b.batch, seq_len, heads, b.head_dim), np.float32), dtype)
    return x if sharding is None else jax.device_put(x, sharding[0])
  seg = np.repeat(np.arange(1, b.documents + 1, dtype=np.int32),
                  -(-seq_len // b.documents))[:seq_len]
  seg = jnp.asarray(np.broadcast_to(seg, (b.batch, seq_len)))
  if sharding is not None:
    seg = jax.device_put(seg, sharding[1])
  return normal(b.heads), normal(b.kv_heads), normal(b.kv_heads), seg


def kernel_options(b: BenchConfig, kernel: str) -> dict:
  if kernel in ('blockwise', 'ring', 'all_gather', 'splash'):
    return dict(block_q=b.block_q, block_kv=b.block_kv)
  if kernel == 'flash_gpu':   # Triton tiles live in registers and shared memory: smaller ones
    return dict(block_q=b.flash_block_q, block_kv=b.flash_block_kv)
  return {}


def programs(kernel: str, options: dict):
  def fwd(q, k, v, seg):
    return attention(q, k, v, seg, kernel=kernel, **options)

  def loss(q, k, v, seg):
    return jnp.sum(fwd(q, k, v, seg).astype(jnp.float32))

  return {'fwd': jax.jit(fwd), 'fwd_bwd': jax.jit(jax.grad(loss, argnums=(0, 1, 2)))}


def time_it(fn, args, repeats: int) -> float:
  """Seconds of the fastest of `repeats` runs (the first, compiling, run is not counted)."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def measure(b: BenchConfig, kernel: str, seq_len: int, limit: float, sharding) -> dict:
  """One row of the table; 'status' says why a program was not timed."""
  args = operands(b, seq_len, sharding)
  row = dict(kernel=kernel, seq_len=seq_len, status='ok')
  for name, fn in programs(kernel, kernel_options(b, kernel)).items():
    if name == 'fwd_bwd' and not b.backward:
      continue
    try:
      compiled = fn.lower(*args).compile()
    except Exception as e:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' in str(e) or 'out of memory' in str(e).lower():
        row['status'] = f'{name} does not compile within device memory'
        return row
      raise
    peak = peak_bytes(compiled)
    row[f'{name}_peak_bytes'] = peak
    if peak > limit:
      row['status'] = f'{name} needs {peak / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB'
      return row
    try:
      seconds = time_it(compiled, args, b.repeats)
    except Exception as e:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' in str(e) or 'out of memory' in str(e).lower():
        row['status'] = f'{name} ran out of memory'
        return row
      raise
    work = flops(b, seq_len) * (1 if name == 'fwd' else 3)
    row[f'{name}_seconds'] = seconds
    row[f'{name}_tflops'] = work / seconds / 1e12
  return row


def context_mesh(b: BenchConfig):
  from lladax.sharding import AXES, CONTEXT_AXIS  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  if b.context > len(devices):
    raise ConfigError(f'config.bench.context={b.context} exceeds the {len(devices)} devices here; '
                      'lower it.')
  shape = tuple(b.context if a == CONTEXT_AXIS else 1 for a in AXES)
  mesh = jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices[:b.context])
  spec = jax.sharding.PartitionSpec(None, CONTEXT_AXIS)
  return mesh, (jax.sharding.NamedSharding(mesh, spec), jax.sharding.NamedSharding(mesh, spec))


def skip_reason(b: BenchConfig, kernel: str, platform: str) -> str | None:
  if kernel == 'splash' and platform != 'tpu':
    return f'a Pallas TPU kernel; on {platform} it only runs in interpret mode, too slow to time'
  if kernel == 'flash_gpu' and platform != 'gpu':
    return f'a Pallas GPU kernel; on {platform} it only runs in interpret mode, too slow to time'
  if kernel in CONTEXT_KERNELS and b.context == 1:
    return 'the same program as blockwise without a context mesh; set config.bench.context > 1'
  return None


def _fmt(row: dict, name: str) -> str:
  if f'{name}_seconds' not in row:
    return f'{"-":>9} {"-":>8} {_gib(row.get(f"{name}_peak_bytes")):>9}'
  return (f'{1e3 * row[f"{name}_seconds"]:>9.1f} {row[f"{name}_tflops"]:>8.3f} '
          f'{_gib(row.get(f"{name}_peak_bytes")):>9}')


def _gib(x) -> str:
  return '-' if x is None or x != x else f'{x / 2**30:.3f}'


def run(config) -> list[dict]:
  recipe = parse(config)
  platform = jax.default_backend()
  b = resolve(recipe.bench, platform)
  for kernel in b.kernels:
    choice(kernel, tuple(KERNELS), 'config.bench.kernels[]')
  choice(b.dtype, DTYPES, 'config.bench.dtype')
  if b.min_seq_len <= 0 or b.min_seq_len > b.max_seq_len:
    raise ConfigError(f'config.bench.min_seq_len={b.min_seq_len} must be positive and at most '
                      f'max_seq_len={b.max_seq_len}; fix one of them.')
  if b.heads % b.kv_heads:
    raise ConfigError(f'config.bench.heads={b.heads} is not a multiple of kv_heads={b.kv_heads}.')
  if b.min_seq_len % b.context:
    raise ConfigError(f'config.bench.min_seq_len={b.min_seq_len} is not divisible by '
                      f'context={b.context}; use powers of two.')
  mesh, sharding = context_mesh(b) if b.context > 1 else (None, None)
  limit = memory_limit()
  device = jax.devices()[0]
  flash_tiles = (f' (flash_gpu {b.flash_block_q}x{b.flash_block_kv})'
                 if 'flash_gpu' in b.kernels else '')
  print(f'attention_bench on {platform} ({getattr(device, "device_kind", platform)}, '
        f'{b.context} device(s) on the context axis): batch {b.batch}, {b.heads} heads '
        f'({b.kv_heads} key/value), head_dim {b.head_dim}, {b.dtype}, {b.documents} document(s) '
        f'per row, tiles {b.block_q}x{b.block_kv}{flash_tiles}; '
        f'memory limit {limit / 2**30:.1f} GiB; '
        f'FLOPs 4*B*T^2*H*D forward, x3 forward+backward', flush=True)
  print(f'{"seq_len":>8} {"kernel":>10} | {"fwd ms":>9} {"TFLOP/s":>8} {"peak GiB":>9} | '
        f'{"f+b ms":>9} {"TFLOP/s":>8} {"peak GiB":>9} | status', flush=True)
  results = []
  for kernel in b.kernels:
    reason = skip_reason(b, kernel, platform)
    if reason:
      print(f'{"":>8} {kernel:>10} | skipped: {reason}', flush=True)
      results.append(dict(kernel=kernel, status=f'skipped: {reason}'))
      continue
    for n in seq_lens(b):
      start = time.perf_counter()
      if mesh is not None:
        with jax.set_mesh(mesh):
          row = measure(b, kernel, n, limit, sharding)
      else:
        row = measure(b, kernel, n, limit, sharding)
      logging.info('%s at %d took %.1f s', kernel, n, time.perf_counter() - start)
      results.append(row)
      print(f'{n:>8} {kernel:>10} | {_fmt(row, "fwd")} | {_fmt(row, "fwd_bwd")} | '
            f'{row["status"]}', flush=True)
      if row['status'] != 'ok':
        break   # longer sequences will not fit either
  if recipe.workdir:
    report = {'platform': platform, 'bench': dataclasses.asdict(b), 'results': results}
    path = files.write_json(os.path.join(recipe.workdir, 'attention_bench.json'), report, indent=1)
    print(f'wrote {path}')
  return results


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  kernels: tuple[str, ...] = ('reference', 'blockwise', 'splash', 'flash_gpu', 'ring',
                              'all_gather')
  min_seq_len: int = 1024
  max_seq_len: int = 0      # longest sequence tried; 0: 131072 on GPU/TPU, 2048 on CPU
  batch: int = 1
  heads: int = 32           # LLaDA-8B: 32 heads of 128
  kv_heads: int = 0         # 0: as many as heads (LLaDA-8B is plain multi-head attention)
  head_dim: int = 128
  dtype: str = ''           # '': bfloat16 on GPU/TPU, float32 on CPU
  documents: int = 1        # equal documents packed per row; 1 is full attention, the worst case
  block_q: int = 512        # tile sizes of the blockwise, ring and splash kernels
  block_kv: int = 512
  flash_block_q: int = 128  # tile sizes of the flash_gpu kernel (powers of two)
  flash_block_kv: int = 64
  context: int = 1          # devices on the context axis for ring / all_gather (1: skip those)
  repeats: int = 3          # timed runs after the compiling one; the fastest counts
  backward: bool = True     # also time forward + backward
