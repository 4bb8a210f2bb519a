"""TPU chip facts for memory plans and rooflines, and the topology names libtpu understands.

Sources (Cloud TPU system-architecture pages, "key specifications" tables):
  v4   https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s. ICI is
       not in that table; the v4 paper (Jouppi et al., ISCA 2023) gives 6 links per chip at
       50 GB/s each way, i.e. 600 GB/s bidirectional per chip.
  v5e  https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s,
       400 GB/s bidirectional ICI per chip (4 ports, 2D torus).
  v5p  https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s,
       1200 GB/s bidirectional ICI per chip (3D torus), 50 Gb/s DCN per chip.
  v6e  https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s,
       800 GB/s bidirectional ICI per chip (4 ports, 2D torus).
The compiler keeps part of HBM for itself (a v4 plan that does not fit reports "exceeds
available HBM (30.75G)"), so a plan within a few percent of `hbm_bytes` may still fail.
"""
from __future__ import annotations

import dataclasses
import os

from lladax.config import ConfigError

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                  # the topology prefix: 'v5p' in 'v5p:4x4x4'
  device_kind: str           # what jax reports for it
  hbm_bytes: float
  peak_bf16_flops: float     # dense matmul FLOP/s per chip
  hbm_bandwidth: float       # bytes/s
  ici_bandwidth: float       # bytes/s per chip, both directions summed
  dims: int                  # torus dimensions: a topology is 'AxB' (2) or 'AxBxC' (3)
  megacore: bool = False     # two TensorCores act as one device (needs chip_config_name)


CHIPS = {c.name: c for c in (
    Chip('v4', 'TPU v4', 32 * GiB, 275e12, 1200e9, 600e9, 3, megacore=True),
    Chip('v5e', 'TPU v5 lite', 16e9, 197e12, 819e9, 400e9, 2),
    Chip('v5p', 'TPU v5', 95 * GiB, 459e12, 2765e9, 1200e9, 3),
    Chip('v6e', 'TPU v6 lite', 32e9, 918e12, 1638e9, 800e9, 2),
)}


def parse_topology(topology: str) -> tuple[Chip, tuple[int, ...]]:
  """'v5p:4x4x4' -> (the v5p chip, (4, 4, 4)); one sentence naming the fix when malformed."""
  name, sep, shape = topology.partition(':')
  if not sep or name not in CHIPS:
    raise ConfigError(f'config.plan.topology={topology!r} is not <chip>:<shape>; use one of '
                      f'{", ".join(CHIPS)} as the chip, e.g. v5p:4x4x4 or v5e:4x4.')
  chip = CHIPS[name]
  try:
    dims = tuple(int(d) for d in shape.split('x'))
  except ValueError:
    dims = ()
  if len(dims) != chip.dims or min(dims, default=0) <= 0:
    example = 'x'.join(['4'] * chip.dims)
    raise ConfigError(f'config.plan.topology={topology!r} needs {chip.dims} positive chip counts '
                      f'for {name}, e.g. {name}:{example}.')
  return chip, dims


def topology_devices(topology: str, num_slices: int = 1) -> tuple[Chip, list]:
  """Compile-only TPU devices for `topology` (one per chip, megacore on v4), via libtpu."""
  chip, _ = parse_topology(topology)
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  # libtpu's lockfile guards real chips; a compile-only topology touches none, and without this
  # any other jax process on the host that initialised libtpu would block the plan.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  kwargs = {'chip_config_name': 'megacore'} if chip.megacore else {}
  if num_slices > 1:
    kwargs['num_slices'] = num_slices
  try:
    desc = topologies.get_topology_desc(platform='tpu', topology_name=topology, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    # libtpu says what it refuses in several exception types (some with empty messages).
    if 'not installed' in str(e):
      raise ConfigError(f'planning for {topology} needs libtpu on this host; install it with '
                        'pip install "jax[tpu]==<the installed jax version>".') from None
    raise ConfigError(f'libtpu cannot build topology {topology!r} ({type(e).__name__}: '
                      f'{str(e).strip()[:200] or "no message"}); choose a slice shape Cloud TPU '
                      'offers, such as v5p:4x4x4, v4:4x4x4 or v5e:4x4.') from None
  return chip, list(desc.devices)


def libtpu_available() -> bool:
  """Whether ahead-of-time TPU compilation can run here (libtpu installed)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec('libtpu') is not None
