"""The sharded step on 8 simulated CPU devices equals one device, with the layout the rules give.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax is imported, which
other test modules have already done here, so tests/sharding_checks.py runs in a subprocess and
prints what these tests assert on.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope='module')
def checks():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, os.path.join(HERE, 'sharding_checks.py')], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_are_simulated(checks):
  assert checks['devices'] == 8


@pytest.mark.parametrize('run', ['context', 'tensor'])
def test_loss_gradients_and_update_on_the_mesh_equal_one_device(checks, run):
  r = checks[run]
  assert r['masked_tokens'] >= 10
  assert r['loss_mesh'] == pytest.approx(r['loss_single'], abs=1e-5)
  assert r['metrics_diff'] < 1e-5
  assert r['grad_scale'] > 0.1 and r['grad_diff'] < 1e-5
  # AdamW's first step moves each weight by about lr * sign(g), so compare at lr scale.
  assert r['update_diff'] < 1e-5


def test_context_run_uses_ring_attention_when_registered(checks):
  from lladax import attention  # pylint: disable=import-outside-toplevel
  assert checks['context']['kernel'] == ('ring' if 'ring' in attention.KERNELS else 'reference')
  assert checks['tensor']['step'] == {'microbatches': 2, 'loss_chunks': 4}


def test_parameters_are_sharded_as_the_rules_say(checks):
  # fsdp=2 x context=4: 'embed' over (fsdp, context); vocab=67 does not divide over tensor.
  specs = checks['context']['param_specs']
  assert specs['q_proj'] == [None, ['fsdp', 'context'], None, None]
  assert specs['attn_out'] == [None, None, None, ['fsdp', 'context']]
  assert specs['wte'] == [None, ['fsdp', 'context']]
  assert specs['lm_head'] == [['fsdp', 'context'], None]
  assert specs['attn_norm'] == [None, None] and specs['ln_f'] == [None]
  assert checks['context']['shard_shape']['q_proj'] == [2, 4, 4, 8]   # d_model 32 / 8
  # fsdp=2 x context=2 x tensor=2: heads and mlp over tensor as well.
  specs = checks['tensor']['param_specs']
  assert specs['q_proj'] == [None, ['fsdp', 'context'], 'tensor', None]
  assert specs['ff_out'] == [None, 'tensor', ['fsdp', 'context']]
  assert checks['tensor']['shard_shape'] == {'q_proj': [2, 8, 2, 8], 'ff_out': [2, 24, 8]}


def test_adam_moments_follow_their_parameters_and_counts_replicate(checks):
  assert checks['tensor']['mu_spec'] == [None, ['fsdp', 'context'], 'tensor']
  assert checks['tensor']['count_spec'] == []


def test_activations_are_pinned_inside_the_step(checks):
  assert checks['context']['constraints_in_hlo'] > 10


def test_sharded_init_equals_one_device_init_and_is_sharded(checks):
  init = checks['init']
  assert init['init_diff'] == 0.0
  assert init['ff_proj_spec'] == [None, ['fsdp', 'context'], 'tensor']
  assert init['ff_proj_shard'] == [2, 8, 24]
  assert init['nu_spec'] == init['ff_proj_spec'] and init['count_spec'] == []


def test_constrain_follows_the_ambient_mesh_and_drops_indivisible_axes(checks):
  c = checks['constrain']
  assert c['no_mesh_devices'] == 1
  assert c['residual_spec'] == [['data', 'fsdp'], 'context']
  assert c['odd_batch_spec'] == [None, 'context']


def test_mesh_fills_and_refuses_in_one_sentence(checks):
  m = checks['mesh']
  assert m['filled'] == {'data': 1, 'fsdp': 2, 'context': 4, 'tensor': 1}
  assert m['axis_types'] == ['AxisType.Auto'] * 4
  assert 'does not match the 8 devices' in m['too_many']
  assert '3 does not divide 8' in m['not_dividing']
