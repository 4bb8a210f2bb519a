"""Running a per-shard attention function inside jax.shard_map over the ambient mesh.

Activations arrive laid out batch over (data, fsdp), sequence over context and heads over
tensor (lladax.sharding). Inside the shard_map each device sees its own batch rows, heads and
query positions; the kernel decides whether keys are sharded too (the ring passes them round)
or gathered over the context axis (all-gather context parallelism).

An axis that does not divide its dimension is left out of the spec (the work is then repeated on
that axis rather than refused), except the context axis, which must divide the sequence because
silently replicating a 128K sequence is never what a caller wants.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

from lladax.sharding import BATCH_AXES, CONTEXT_AXIS, TENSOR_AXIS


@dataclasses.dataclass(frozen=True)
class Layout:
  """How attention's operands are split over the ambient mesh."""
  mesh: jax.sharding.AbstractMesh
  batch: tuple[str, ...] | None   # axes the batch dimension is split over
  context: str | None             # the sequence axis, when the mesh has one
  tensor: str | None              # the heads axis, when it divides the (key/value) heads
  repeat_kv: int                  # key/value heads are repeated this often to shard over tensor

  @property
  def context_size(self) -> int:
    return self.mesh.shape[self.context] if self.context else 1

  @property
  def explicit(self) -> bool:
    used = set(self.batch or ()) | {self.context, self.tensor} - {None}
    return any(t == AxisType.Explicit
               for name, t in zip(self.mesh.axis_names, self.mesh.axis_types) if name in used)

  def spec(self, sequence: bool, heads: bool) -> P:
    """[B, L, (H, D)] spec; `sequence` False keeps the length whole (gathered)."""
    parts = [self.batch, self.context if sequence else None]
    if heads:
      parts += [self.tensor, None]
    return P(*parts)


def ambient_mesh() -> jax.sharding.AbstractMesh | None:
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def platform() -> str:
  """The platform the computation is being built for: the mesh's when one is set (so that an
  ahead-of-time compile for a TPU topology on a CPU host says 'tpu'), else the default backend."""
  mesh = ambient_mesh()
  device = getattr(mesh, 'abstract_device', None)
  return getattr(device, 'platform', None) or jax.default_backend()


def layout(q: jax.Array, k: jax.Array) -> Layout | None:
  """The split of q [B,T,H,D] / k [B,S,KH,D] over the ambient mesh; None without a mesh."""
  mesh = ambient_mesh()
  if mesh is None:
    return None
  free = {name for name, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Manual}
  b, h, kh = q.shape[0], q.shape[2], k.shape[2]
  batch, size = [], 1
  for name in BATCH_AXES:
    if name in free and b % (size * mesh.shape[name]) == 0:
      batch.append(name)
      size *= mesh.shape[name]
  context = CONTEXT_AXIS if CONTEXT_AXIS in free else None
  tensor, repeat = None, 1
  if TENSOR_AXIS in free:
    t = mesh.shape[TENSOR_AXIS]
    if kh % t == 0:
      tensor = TENSOR_AXIS
    elif h % t == 0:
      # Fewer key/value heads than tensor shards: repeat them just enough to split evenly.
      repeat = next(r for r in range(1, h // kh + 1) if (h // kh) % r == 0 and (kh * r) % t == 0)
      tensor = TENSOR_AXIS
  return Layout(mesh, tuple(batch) or None, context, tensor, repeat)


def check_divisible(lay: Layout, length: int, what: str) -> None:
  n = lay.context_size
  if length % n:
    raise ValueError(f'{what} length {length} is not divisible by the {lay.context!r} mesh axis '
                     f'({n} shards); pad sequences to a multiple of {n}.')


def shard_attention(per_shard: Callable, lay: Layout, q: jax.Array, k: jax.Array, v: jax.Array,
                    q_segment_ids: jax.Array, kv_segment_ids: jax.Array, *,
                    gather_kv: bool) -> jax.Array:
  """per_shard(q, k, v, q_seg, kv_seg) -> out on local blocks, run over `lay.mesh`.

  gather_kv: keys, values and their segment ids are whole on every context shard (XLA gathers
  them before the shard_map, and sums their gradients back); otherwise they are split like q.
  """
  check_divisible(lay, q.shape[1], 'query')
  if not gather_kv:
    check_divisible(lay, k.shape[1], 'key')
  if lay.repeat_kv > 1:
    k = jnp.repeat(k, lay.repeat_kv, axis=2)
    v = jnp.repeat(v, lay.repeat_kv, axis=2)
  q_spec = lay.spec(True, True)
  kv_spec = lay.spec(not gather_kv, True)
  qs_spec = lay.spec(True, False)
  kvs_spec = lay.spec(not gather_kv, False)
  args = (q, k, v, q_segment_ids, kv_segment_ids)
  specs = (q_spec, kv_spec, kv_spec, qs_spec, kvs_spec)
  if lay.explicit:
    # In explicit mode in_specs assert the operands' shardings instead of imposing them.
    args = tuple(jax.sharding.reshard(x, s) for x, s in zip(args, specs))
  axes = frozenset(n for n, t in zip(lay.mesh.axis_names, lay.mesh.axis_types)
                   if t != AxisType.Manual)
  # check_vma=False: the ring's carries change varying-ness across ppermute and custom_vjp
  # boundaries; every output here is split along every axis it depends on, so nothing is lost.
  fn = jax.shard_map(per_shard, mesh=lay.mesh, in_specs=specs, out_specs=q_spec,
                     axis_names=axes, check_vma=False)
  return fn(*args)
