"""Logical-axis rules, mesh shapes and their errors: pure logic, on one device (abstract meshes)."""
import logging

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from helpers import tiny_config
from lladax import model as model_lib, sharding
from lladax.config import ConfigError


def abstract_mesh(types=None, **sizes):
  names = tuple(sizes)
  types = types or (AxisType.Auto,) * len(names)
  return AbstractMesh(tuple(sizes.values()), names, axis_types=types)


POD = abstract_mesh(data=2, fsdp=4, context=2, tensor=2)


@pytest.mark.parametrize('names,shape,expected', [
    (('layers', 'embed', 'heads', 'head_dim'), (32, 4096, 32, 128),
     P(None, ('fsdp', 'context'), 'tensor', None)),
    (('vocab', 'embed'), (126464, 4096), P('tensor', ('fsdp', 'context'))),
    (('layers', 'mlp', 'embed'), (32, 12288, 4096), P(None, 'tensor', ('fsdp', 'context'))),
    (('batch', 'length', 'act_embed'), (16, 1024, 4096), P(('data', 'fsdp'), 'context', None)),
    (('batch', 'length', 'vocab'), (16, 1024, 126464), P(('data', 'fsdp'), 'context', 'tensor')),
    (('norm',), (4096,), P(None)),
])
def test_default_rules_shard_weights_over_fsdp_context_tensor_and_activations_by_batch_length(
    names, shape, expected):
  assert sharding.logical_to_spec(names, POD, sharding.DEFAULT_RULES, shape) == expected


def test_an_indivisible_dimension_is_replicated_over_that_axis_and_logged(caplog):
  with caplog.at_level(logging.WARNING):
    spec = sharding.logical_to_spec(('vocab', 'embed'), POD, sharding.DEFAULT_RULES, (67, 4096))
  assert spec == P(None, ('fsdp', 'context'))
  assert "'vocab' (size 67) is not divisible by mesh axis 'tensor'" in caplog.text


def test_a_batch_divisible_by_data_but_not_data_times_fsdp_keeps_data_only():
  spec = sharding.logical_to_spec(('batch', 'length'), POD, sharding.DEFAULT_RULES, (6, 64))
  assert spec == P('data', 'context')


def test_absent_size_one_and_manual_axes_are_dropped():
  no_tensor = abstract_mesh(data=1, fsdp=8)
  assert sharding.logical_to_spec(('embed', 'heads'), no_tensor) == P('fsdp', None)
  assert sharding.logical_to_spec(('batch', 'length'), no_tensor) == P('fsdp', None)
  manual = abstract_mesh(types=(AxisType.Auto, AxisType.Manual), fsdp=2, context=4)
  assert sharding.logical_to_spec(('batch', 'length'), manual) == P('fsdp', None)


def test_a_mesh_axis_is_used_by_one_dimension_only():
  rules = ('embed=fsdp', 'mlp=fsdp,tensor')
  assert sharding.logical_to_spec(('embed', 'mlp'), POD, rules) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('mlp', 'embed'), POD, rules) == P(('fsdp', 'tensor'), None)


def test_unknown_logical_names_are_replicated():
  assert sharding.logical_to_spec(('nobody', None), POD) == P(None, None)


@pytest.mark.parametrize('rules,message', [
    (('embed',), "not 'logical=axis"),
    (('embed=fsdp', 'embed=tensor'), "names 'embed' twice"),
    (('embed=fsdpp',), "mesh axis 'fsdpp'"),
])
def test_bad_rules_are_refused_in_one_sentence(rules, message):
  with pytest.raises(ConfigError, match=message):
    sharding.MeshConfig(rules=rules)


def test_param_specs_follow_each_parameters_logical_axes():
  specs = sharding.param_specs(model_lib.abstract(tiny_config(d_model=32, n_heads=4)), POD)
  fc = ('fsdp', 'context')
  assert specs['wte'] == P(None, fc)          # vocab 67 does not divide over tensor=2
  assert specs['blocks']['q_proj'] == P(None, fc, 'tensor', None)
  assert specs['blocks']['attn_out'] == P(None, 'tensor', None, fc)
  assert specs['blocks']['ff_out'] == P(None, 'tensor', fc)
  assert specs['blocks']['attn_norm'] == P(None, None)
  assert specs['lm_head'] == P(fc, None)


@pytest.mark.parametrize('kw,devices,slices,ici,dcn', [
    ({}, 8, 1, (1, 8, 1, 1), (1, 1, 1, 1)),
    ({'context': 4}, 8, 1, (1, 2, 4, 1), (1, 1, 1, 1)),
    ({'fsdp': 2, 'context': 2, 'tensor': 2}, 8, 1, (1, 2, 2, 2), (1, 1, 1, 1)),
    ({'context': 4}, 16, 2, (1, 2, 4, 1), (2, 1, 1, 1)),
    ({'fsdp': 8, 'dcn_data': 1, 'dcn_fsdp': -1}, 32, 4, (1, 8, 1, 1), (1, 4, 1, 1)),
])
def test_mesh_shape_fills_the_minus_one_axis(kw, devices, slices, ici, dcn):
  got_ici, got_dcn = sharding.mesh_shape(sharding.MeshConfig(**kw), devices, slices)
  assert tuple(got_ici[a] for a in sharding.AXES) == ici
  assert tuple(got_dcn[a] for a in sharding.AXES) == dcn


@pytest.mark.parametrize('kw,devices,slices,message', [
    ({'fsdp': 4, 'context': 4}, 8, 1, r'= 16 does not match the 8 devices per slice'),
    ({'context': 3}, 8, 1, r'3 does not divide 8'),
    ({'dcn_data': 2}, 8, 1, r'does not match the 1 slices'),
])
def test_mesh_sizes_that_do_not_match_the_devices_are_refused(kw, devices, slices, message):
  with pytest.raises(ConfigError, match=message):
    sharding.mesh_shape(sharding.MeshConfig(**kw), devices, slices)


@pytest.mark.parametrize('kw,message', [
    ({'fsdp': -1, 'context': -1}, 'more than one ICI size to -1'),
    ({'tensor': 0}, r'tensor=0 must be positive or -1'),
])
def test_bad_mesh_sizes_are_refused(kw, message):
  with pytest.raises(ConfigError, match=message):
    sharding.MeshConfig(**kw)


def test_make_mesh_on_this_host_and_its_error():
  mesh = sharding.make_mesh(sharding.MeshConfig())
  assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {a: 1 for a in sharding.AXES}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ConfigError, match='config.mesh'):
    sharding.make_mesh(sharding.MeshConfig(context=2))


def test_constrain_is_a_no_op_without_a_mesh():
  x = jnp.ones((2, 4, 8))
  assert sharding.constrain(x, sharding.RESIDUAL) is x
  jaxpr = jax.make_jaxpr(lambda x: sharding.constrain(x, sharding.RESIDUAL))(x)
  assert 'sharding_constraint' not in str(jaxpr)


def test_constrain_pins_the_layout_under_an_ambient_mesh():
  with jax.sharding.use_abstract_mesh(POD):
    jaxpr = jax.make_jaxpr(lambda x: sharding.constrain(x, sharding.RESIDUAL))(
        jnp.ones((8, 16, 4)))
  assert "spec=P(('data', 'fsdp'), 'context', None)" in str(jaxpr)


def test_use_rules_changes_what_constrain_applies():
  x = jnp.ones((8, 16, 4))
  with jax.sharding.use_abstract_mesh(POD), sharding.use_rules(('batch=', 'length=')):
    jaxpr = jax.make_jaxpr(lambda x: sharding.constrain(x, sharding.RESIDUAL))(x)
  assert 'sharding_constraint' not in str(jaxpr)


def test_multihost_init_runs_only_for_several_processes(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a: calls.append(a))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  for name in ('JAX_COORDINATOR_ADDRESS', 'MEGASCALE_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
               'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert not sharding.multihost_init()
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert not sharding.multihost_init()
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host-a,host-b')
  assert sharding.multihost_init()
  assert sharding.multihost_init('10.0.0.1:1234', 2, 1)
  assert calls == [(None, None, None), ('10.0.0.1:1234', 2, 1)]
