"""The plan job: ahead-of-time compilation for TPU topologies on this CPU host (needs libtpu)."""
import dataclasses
import json

import pytest
from helpers import repo_module

from lladax import flops, model_config, plan, sharding, tpu_chips
from lladax.config import ConfigError, parse
from lladax.model_config import ModelConfig

needs_libtpu = pytest.mark.skipif(
    not tpu_chips.libtpu_available(),
    reason='libtpu is not installed; pip install "jax[tpu]==<the installed jax version>" to '
           'compile TPU plans on this host')


def recipe(name):
  return repo_module('configs', name).get_config()


@needs_libtpu
def test_tiny_plan_reports_sharded_memory_flops_and_roofline(tmp_path, capsys):
  c = recipe('plan_tiny.py')
  # remat 'none': the ring kernel's recomputed forward triples the compile time.
  c.plan.update(meshes=('fsdp=-1,context=2',), remat_policies=('none',),
                output=str(tmp_path / 'plan.json'))
  result = plan.run(c)
  out = capsys.readouterr().out
  assert 'best: data=1 fsdp=2 context=2 tensor=1, remat none' in out
  best = result['best']
  assert [r['status'] for r in result['plans']] == ['fits'] and result['plans'][0] is best
  # Parameters and both Adam moments (12 bytes per parameter) split over fsdp x context = 4,
  # not whole on every chip (the recipe's sizes need no TPU tile padding).
  cfg = model_config.resolve_rope(parse(c).model, parse(c).rope)
  state = 12 * cfg.num_params()
  assert state / 4 < best['memory']['arguments'] < 1.05 * state / 4
  tokens = 8 * 1024
  assert best['flops']['model_per_step'] == pytest.approx(
      flops.train_per_token(cfg, 1024) * tokens)
  assert best['flops']['executed_per_step'] == best['flops']['model_per_step']  # nothing rerun
  assert 0 < best['roofline']['mfu_ceiling'] <= 1
  assert best['eval']['status'] == 'fits'
  assert best['eval']['memory']['total'] < best['memory']['total']
  saved = json.loads((tmp_path / 'plan.json').read_text())
  assert saved['best']['mesh'] == best['mesh'] and saved['chips'] == 4


@needs_libtpu
def test_a_plan_that_does_not_fit_names_the_knobs(tmp_path):
  c = recipe('plan_tiny.py')
  c.model.update(attention_kernel='reference', remat_policy='none', max_sequence_length=65536)
  c.data.update(seq_len=65536)
  c.plan.update(meshes=(), remat_policies=(), evaluate=False)
  with pytest.raises(ConfigError) as e:
    plan.run(c)
  message = str(e.value)
  assert 'no plan fits v5e:2x2' in message and 'HBM' in message
  assert "remat_policy='full'" in message and 'config.step.microbatches' in message


@needs_libtpu
def test_v4_is_one_device_per_megacore_chip_and_slices_become_the_data_axis():
  chip, devices = tpu_chips.topology_devices('v4:2x2x1')
  assert chip.name == 'v4' and len(devices) == 4
  _, devices = tpu_chips.topology_devices('v5e:2x2', num_slices=2)
  mesh = sharding.make_mesh(sharding.MeshConfig(context=2), devices)
  assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {'data': 2, 'fsdp': 2, 'context': 2,
                                                         'tensor': 1}
  slices = [{d.slice_index for d in row.flat} for row in mesh.devices]
  assert slices == [{0}, {1}]


@pytest.mark.parametrize('topology,message', [
    ('v9:2x2', 'not <chip>:<shape>'),
    ('v5p:4x4', 'needs 3 positive chip counts'),
    ('v5e', 'not <chip>:<shape>'),
])
def test_bad_topologies_are_refused(topology, message):
  with pytest.raises(ConfigError, match=message):
    plan.PlanConfig(topology=topology)


def test_mesh_sweep_entries_override_the_recipe_mesh():
  base = sharding.MeshConfig(fsdp=-1, context=4)
  assert plan.parse_mesh('context=16, tensor=2', base) == sharding.MeshConfig(
      fsdp=-1, context=16, tensor=2)
  with pytest.raises(ConfigError, match="axis=size"):
    plan.parse_mesh('contxt=16', base)


def test_recomputation_grows_with_how_little_the_policy_keeps():
  cfg = ModelConfig()
  cost = {p: plan.recompute_per_token(cfg, 131072, p)
          for p in ('none', 'minimal', 'save_qkv_proj', 'full')}
  assert cost['none'] == 0
  assert cost['full'] > cost['save_qkv_proj'] > cost['minimal'] > 0
  assert cost['full'] == pytest.approx(flops.forward_per_token(cfg, 131072)['total'] -
                                       2 * cfg.vocab_size * cfg.d_model, rel=1e-4)


def test_policies_that_keep_attention_residuals_rerun_no_attention():
  cfg = ModelConfig()
  attention = flops.forward_per_token(cfg, 131072)['attention']
  cost = {p: plan.recompute_per_token(cfg, 131072, p) for p in model_config.REMAT_POLICIES}
  assert cost['full'] - cost['save_attention'] == pytest.approx(attention)
  assert cost['save_qkv_proj'] - cost['save_qkv_attention'] == pytest.approx(attention)
  # At 128K the attention is most of the block, so keeping it lifts the ceiling above 90%.
  model = flops.train_per_token(cfg, 131072)
  assert model / (model + cost['full']) < 0.76
  assert model / (model + cost['save_attention']) > 0.9
  sizes = {'data': 1, 'fsdp': 8, 'context': 8, 'tensor': 1}
  ring = {p: plan.ici_bytes(dataclasses.replace(cfg, remat_policy=p), sizes, 32,
                            131072)['context'] for p in ('none', 'full', 'save_attention')}
  assert ring['save_attention'] == ring['none'] < ring['full']


@pytest.mark.parametrize('text,expected', [
    ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
     'temporaries (1.38T) exceeds available HBM (95.74G).',
     'HLO temporaries need 1.38T, more than the 95.74G HBM'),
    ('RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space '
     'hbm. Used 45.39G of 30.75G hbm. Exceeded hbm capacity by 14.64G.',
     'needs 45.39G of 30.75G HBM'),
    ('INVALID_ARGUMENT: something else', None),
])
def test_out_of_memory_messages_are_summarised(text, expected):
  assert plan._out_of_memory(RuntimeError(text)) == expected


def test_step_config_reads_from_the_recipe():
  c = recipe('ultra128k.py')
  assert parse(c).step.loss_chunks > 1
  assert parse(c).mesh.context > 1
