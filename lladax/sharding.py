"""The device mesh and the logical-axis rules that map the model's named axes onto it.

Mesh axes (outermost first):
  data     pure data parallelism (replicas; across slices over DCN)
  fsdp     data parallelism with parameters and optimizer state sharded (ZeRO-3 style)
  context  the sequence dimension (context parallelism: ring or all-gather attention)
  tensor   attention heads and MLP hidden units (tensor parallelism)
Activations [batch, length, ...] are laid out batch over (data, fsdp), length over context.
Weights are split over fsdp and context together (their 'embed' dimension): for weights,
context parallelism is one more kind of data parallelism.

A rule 'name=axis[,axis...]' shards a logical dimension over those mesh axes; 'name=' keeps it
whole. Parameters name their dimensions in the `logical_axes` metadata that lladax/model.py
attaches; activations name theirs where the model calls `constrain`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
from typing import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lladax.config import ConfigError

AXES = ('data', 'fsdp', 'context', 'tensor')
BATCH_AXES = ('data', 'fsdp')
CONTEXT_AXIS = 'context'
TENSOR_AXIS = 'tensor'

# Activation dimensions (the names lladax/model.py constrains).
RESIDUAL = ('batch', 'length', 'act_embed')
QUERY = ('batch', 'length', 'heads', 'head_dim')
KEY_VALUE = ('batch', 'length', 'kv_heads', 'head_dim')
TOKENS = ('batch', 'length')
LOGITS = ('batch', 'length', 'vocab')

DEFAULT_RULES = (
    # activations
    'batch=data,fsdp',
    'length=context',
    'act_embed=',      # the residual stream stays whole per token; its matmuls shard weights
    # parameters
    'vocab=tensor',
    'embed=fsdp,context',   # context parallelism is data parallelism for weights
    'heads=tensor',
    'kv_heads=tensor',
    'mlp=tensor',
    'head_dim=',
    'layers=',
    'norm=',
)

_rules = contextvars.ContextVar('lladax_sharding_rules', default=None)
_warned: set = set()


def parse_rules(rules: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """'name=axis,axis' strings -> {name: (axis, ...)}, refusing unknown axes and repeated names."""
  table = {}
  for rule in rules:
    name, sep, axes = rule.partition('=')
    name = name.strip()
    if not sep or not name:
      raise ConfigError(f"config.mesh.rules entry {rule!r} is not 'logical=axis[,axis...]'; write "
                        "it like 'embed=fsdp' (or 'embed=' to keep the dimension whole).")
    if name in table:
      raise ConfigError(f'config.mesh.rules names {name!r} twice; keep one rule per logical axis.')
    names = tuple(a.strip() for a in axes.split(',') if a.strip())
    for axis in names:
      if axis not in AXES:
        raise ConfigError(f'config.mesh.rules entry {rule!r} uses mesh axis {axis!r}; the mesh '
                          f'axes are {", ".join(AXES)}.')
    table[name] = names
  return table


def _table(rules) -> Mapping[str, tuple[str, ...]]:
  return rules if isinstance(rules, Mapping) else parse_rules(rules)


def _warn_once(message: str, *args) -> None:
  key = (message, args)
  if key not in _warned:
    _warned.add(key)
    logging.warning(message, *args)


def logical_to_spec(names: Sequence[str | None], mesh, rules=DEFAULT_RULES,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """The PartitionSpec that `rules` give dimensions `names` on `mesh` (a Mesh or AbstractMesh).

  Mesh axes that the mesh lacks, that have size 1, or that are not Auto (manual inside
  shard_map, explicit) are dropped; a mesh axis is used by one dimension only (the first that
  asks); with `shape`, an axis whose size does not divide the dimension is dropped (that
  dimension is replicated over it) and a warning says so.
  """
  table = _table(rules)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  used, spec = set(), []
  for i, name in enumerate(names):
    kept = []
    for axis in (table.get(name, ()) if name else ()):
      if sizes.get(axis, 1) == 1 or axis in used or types.get(axis) != AxisType.Auto:
        continue
      if shape is not None and shape[i] % (math.prod(sizes[a] for a in kept) * sizes[axis]):
        _warn_once('logical axis %r (size %d) is not divisible by mesh axis %r (%d) on top of %s; '
                   'replicating it over %r', name, shape[i], axis, sizes[axis],
                   tuple(kept) or 'nothing', axis)
        continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_specs(abstract_model, mesh, rules=DEFAULT_RULES):
  """PartitionSpecs for the model's nnx.Param state, from each parameter's `logical_axes`.

  `abstract_model` is a module (from nnx.eval_shape) or its Param state; the result has the
  state's structure with one PartitionSpec where each Param sits.
  """
  state = abstract_model if isinstance(abstract_model, nnx.State) else nnx.state(
      abstract_model, nnx.Param)
  table = _table(rules)

  def one(var):
    names = var.get_metadata().get('logical_axes')
    shape = var.get_value().shape
    if names is None:
      _warn_once('a parameter of shape %s has no logical_axes metadata; replicating it', shape)
      names = (None,) * len(shape)
    return logical_to_spec(names, mesh, table, shape)

  return jax.tree.map(one, state, is_leaf=_is_variable)


def param_shardings(abstract_model, mesh, rules=DEFAULT_RULES):
  """NamedShardings for the model's Param state (a prefix tree of the state, usable as jit
  in/out shardings)."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      param_specs(abstract_model, mesh, rules),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def use_rules(rules):
  """Sets the rule table `constrain` reads while a function is traced."""
  token = _rules.set(_table(rules))
  try:
    yield
  finally:
    _rules.reset(token)


def current_rules() -> Mapping[str, tuple[str, ...]]:
  table = _rules.get()
  return parse_rules(DEFAULT_RULES) if table is None else table


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """x with its layout pinned to what the rules give `names`, when an ambient mesh is set.

  A no-op without a mesh (jax.set_mesh / use_abstract_mesh) and when the rules shard nothing
  (the partitioner stays free to choose), so single-device code pays nothing.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(names, mesh, current_rules(), x.shape)
  if all(s is None for s in spec):
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def _fill(sizes: dict, total: int, what: str) -> dict:
  fixed = math.prod(v for v in sizes.values() if v != -1)
  shown = ' x '.join(f'{k}={v}' for k, v in sizes.items())
  if -1 in sizes.values():
    if total % fixed:
      raise ConfigError(f'config.mesh {shown} cannot fill {total} {what}: {fixed} does not divide '
                        f'{total}; choose sizes whose product divides {total}.')
    return {k: (total // fixed if v == -1 else v) for k, v in sizes.items()}
  if fixed != total:
    raise ConfigError(f'config.mesh {shown} = {fixed} does not match the {total} {what}; make the '
                      'sizes multiply to that, or set one of them to -1 to fill.')
  return sizes


def mesh_shape(cfg: MeshConfig, num_devices: int, num_slices: int = 1
               ) -> tuple[dict[str, int], dict[str, int]]:
  """(ICI sizes, DCN sizes) per mesh axis for `num_devices` devices in `num_slices` slices."""
  if num_devices % num_slices:
    raise ConfigError(f'{num_devices} devices do not split evenly into {num_slices} slices.')
  dcn = _fill({f'dcn_{a}': getattr(cfg, f'dcn_{a}') for a in AXES}, num_slices, 'slices')
  ici = _fill({a: getattr(cfg, a) for a in AXES}, num_devices // num_slices, 'devices per slice')
  return ici, {a: dcn[f'dcn_{a}'] for a in AXES}


def num_slices_of(devices, slices: str = 'devices') -> int:
  """How many slices `devices` span: by their slice_index (TPU; other devices have none and are
  one slice), or with slices='processes' one per process (config.mesh.slices)."""
  if slices == 'processes':
    return len({d.process_index for d in devices})
  return len({getattr(d, 'slice_index', 0) or 0 for d in devices})


def check_sequence_split(cfg: MeshConfig, seq_len: int, where: str, devices=None) -> None:
  """ConfigError when the context axis of the mesh `cfg` gives over `devices` (default: all)
  does not divide `seq_len`: the attention kernels refuse it, but only inside a compiled step."""
  devices = list(jax.devices() if devices is None else devices)
  try:
    ici, dcn = mesh_shape(cfg, len(devices), num_slices_of(devices, cfg.slices))
  except ConfigError:
    return  # sizes that do not fit the devices are refused where the job makes its mesh
  shards = ici[CONTEXT_AXIS] * dcn[CONTEXT_AXIS]
  if seq_len % shards:
    raise ConfigError(f'{where}={seq_len} is not divisible by the {CONTEXT_AXIS} mesh axis '
                      f'({shards} shards); make it a multiple of {shards}, or change '
                      f'config.mesh.{CONTEXT_AXIS}.')


def make_mesh(cfg: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'context', 'tensor') mesh over `devices` (default: all), Auto axes.

  One slice: jax.make_mesh, which orders devices along the physical torus. Several slices:
  mesh_utils.create_hybrid_device_mesh, so only the dcn_* axes cross slice boundaries.
  """
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  devices = list(jax.devices() if devices is None else devices)
  slices = num_slices_of(devices, cfg.slices)
  ici, dcn = mesh_shape(cfg, len(devices), slices)
  types = (AxisType.Auto,) * len(AXES)
  shape = tuple(ici[a] for a in AXES)
  if slices == 1:
    try:
      return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
    except NotImplementedError:
      # An axis that is no product of whole torus dimensions (8 on a 4x4x4 slice) has to run
      # along a split physical axis; its collectives then use fewer links.
      logging.info('mesh %s splits physical torus axes of %d devices', shape, len(devices))
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
      return jax.sharding.Mesh(grid, AXES, axis_types=types)
  grid = mesh_utils.create_hybrid_device_mesh(shape, [dcn[a] for a in AXES], devices,
                                              process_is_granule=cfg.slices == 'processes',
                                              allow_split_physical_axes=True)
  return jax.sharding.Mesh(grid, AXES, axis_types=types)


def _multiprocess_environment() -> bool:
  """Whether the launcher started several processes that must find each other."""
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') or env.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return True
  if ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    return True
  for name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if env.get(name, '1').isdigit() and int(env.get(name, '1')) > 1:
      return True
  return False


def multihost_init(coordinator_address: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None) -> bool:
  """jax.distributed.initialize when this is one process of several (TPU pod, SLURM, MPI, or an
  explicit coordinator); returns whether it initialised. Call before anything touches devices."""
  if jax.distributed.is_initialized():
    return False
  if coordinator_address is None and not _multiprocess_environment():
    return False
  # A vanished peer (kill -9) is noticed after the heartbeat timeout (JAX default 100 s);
  # lladax.launch_local sets these shorter for jobs on one machine.
  bounds = {name: int(os.environ[env]) for name, env in (
      ('heartbeat_timeout_seconds', 'LLADAX_HEARTBEAT_TIMEOUT_S'),
      ('shutdown_timeout_seconds', 'LLADAX_SHUTDOWN_TIMEOUT_S')) if os.environ.get(env)}
  jax.distributed.initialize(coordinator_address, num_processes, process_id, **bounds)
  logging.info('process %d of %d, %d local devices of %d', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes, from `config.mesh`; -1 fills with whatever devices are left.

  data, fsdp, context, tensor are sizes within a slice (over ICI); dcn_* are how many slices
  each axis spans (over the data-centre network), for multi-slice jobs. The mesh axis size is
  the product of the two.
  """
  data: int = 1
  fsdp: int = -1
  context: int = 1
  tensor: int = 1
  dcn_data: int = -1
  dcn_fsdp: int = 1
  dcn_context: int = 1
  dcn_tensor: int = 1
  rules: tuple[str, ...] = DEFAULT_RULES
  # What a slice is: 'devices' as the hardware says (a TPU's slice_index; CPUs and GPUs have none,
  # so all are one slice) | 'processes': each process one slice, so hosts stand in for slices
  # (a multi-slice recipe tried with lladax.launch_local, or DCN-style axes across GPU hosts).
  slices: str = 'devices'

  def __post_init__(self):
    for prefix in ('', 'dcn_'):
      values = [getattr(self, prefix + a) for a in AXES]
      for axis, value in zip(AXES, values):
        if value == 0 or value < -1:
          raise ConfigError(f'config.mesh.{prefix}{axis}={value} must be positive or -1 (fill).')
      if values.count(-1) > 1:
        raise ConfigError(f'config.mesh sets more than one {prefix or "ICI "}size to -1; let only '
                          'one axis fill the remaining devices.')
    parse_rules(self.rules)
    if self.slices not in ('devices', 'processes'):
      raise ConfigError(f"config.mesh.slices={self.slices!r} is not 'devices' or 'processes'.")
