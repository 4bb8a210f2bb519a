"""Exporting lladax models to the PyTorch LLaDA format: bit-exact round trips and PyTorch parity."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_llada as tl
from flax import nnx
from safetensors import safe_open
from safetensors.torch import load_file
from test_convert import _config, ids_of, lladax_logits, make_hf, torch_logits

from lladax import jobs, saved_model
from lladax.config import ConfigError
from lladax.hf import convert, export


def hf_state(directory):
  state = {}
  for file in sorted(os.listdir(directory)):
    if file.endswith('.safetensors'):
      state.update(load_file(os.path.join(directory, file)))
  return state


@pytest.fixture(scope='module')
def bf16(tmp_path_factory):
  """A bf16 HF checkpoint, converted, then exported in 3 shards."""
  root = tmp_path_factory.mktemp('bf16')
  model = make_hf(root / 'hf', torch.bfloat16, torch_dtype='bfloat16')
  lladax_dir = convert.convert(str(root / 'hf'), str(root / 'lladax'))
  out = export.export(lladax_dir, str(root / 'exported'), max_shard_bytes=60_000)
  return model, str(root / 'hf'), lladax_dir, out


def test_import_export_is_bit_exact(bf16):
  _, hf_dir, _, out = bf16
  original, exported = hf_state(hf_dir), hf_state(out)
  assert sorted(original) == sorted(exported)
  for name, tensor in original.items():
    assert exported[name].dtype == tensor.dtype == torch.bfloat16, name
    assert torch.equal(exported[name].view(torch.int16), tensor.view(torch.int16)), name
  with open(os.path.join(hf_dir, 'config.json')) as f, open(os.path.join(out, 'config.json')) as g:
    assert json.load(f) == json.load(g)
  with open(os.path.join(hf_dir, 'tokenizer.json')) as f, open(
      os.path.join(out, 'tokenizer.json')) as g:
    assert f.read() == g.read()


def test_sharded_layout_and_index(bf16):
  _, _, _, out = bf16
  with open(os.path.join(out, 'model.safetensors.index.json')) as f:
    index = json.load(f)
  files = sorted(set(index['weight_map'].values()))
  assert len(files) >= 3 and files == sorted(
      f for f in os.listdir(out) if f.endswith('.safetensors'))
  assert all(f.endswith(f'-of-{len(files):05d}.safetensors') for f in files)
  total = 0
  for file in files:
    with safe_open(os.path.join(out, file), framework='pt') as f:
      assert f.metadata() == {'format': 'pt'}
      for name in f.keys():
        assert index['weight_map'][name] == file
        total += f.get_slice(name).get_shape()[0] * int(np.prod(
            f.get_slice(name).get_shape()[1:])) * 2
  assert index['metadata']['total_size'] == total


def test_import_export_import_is_bit_exact(bf16, tmp_path):
  _, _, lladax_dir, out = bf16
  again = convert.convert(out, str(tmp_path / 'again'))
  assert saved_model.read_config(again)[0] == saved_model.read_config(lladax_dir)[0]
  first, second = saved_model.open_params(lladax_dir), saved_model.open_params(again)
  assert sorted(first) == sorted(second)
  for name, store in first.items():
    a, b = store.read().result(), second[name].read().result()
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), name


def test_exported_directory_gives_pytorch_the_same_logits(bf16):
  model, _, _, out = bf16
  ids = ids_of(20)
  exported = tl.load_local_directory(out, torch.bfloat16)
  assert np.array_equal(torch_logits(exported, ids), torch_logits(model, ids))


def test_export_of_a_trained_model_matches_lladax_logits(bf16, tmp_path):
  # A "post-trained" model: the converted weights in float32, changed, saved by save_model (the
  # train job's path), then exported; PyTorch must reproduce lladax's logits.
  _, _, lladax_dir, _ = bf16
  model, meta = saved_model.load_model(lladax_dir, param_dtype='float32', dtype='float32')
  params = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(1)
  nnx.update(model, jax.tree.unflatten(tree, [
      x + 0.05 * rng.standard_normal(x.shape, np.float32) for x in leaves]))
  # As the train job saves it: the tokenizer but not the original config.json, so the export
  # starts from LLaDA-8B's config.json template.
  trained = saved_model.save_model(str(tmp_path / 'trained'), model,
                                  {'tokenizer': meta['tokenizer']})
  out = export.export(trained, str(tmp_path / 'hf32'))
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'tokenizer.json']
  with open(os.path.join(out, 'config.json')) as f:
    hf = json.load(f)
  assert (hf['block_type'], hf['n_layers'], hf['d_model'], hf['torch_dtype']) == (
      'llama', 3, 64, 'float32')
  ids = ids_of(20)
  want = np.asarray(model(jnp.asarray(ids)))
  assert np.abs(lladax_logits(lladax_dir, ids, dtype='float32') - want).max() > 1e-2  # changed
  assert np.abs(torch_logits(tl.load_local_directory(out), ids) - want).max() <= 1e-4
  assert np.abs(lladax_logits(trained, ids) - want).max() == 0
  # Cast for the bf16 PyTorch world: config.json and every tensor say bfloat16.
  out16 = export.export(trained, str(tmp_path / 'hf16'), dtype='bfloat16')
  with open(os.path.join(out16, 'config.json')) as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'
  assert {t.dtype for t in hf_state(out16).values()} == {torch.bfloat16}


def test_export_job_copies_original_code_files(bf16, tmp_path):
  _, hf_dir, lladax_dir, _ = bf16
  code = tmp_path / 'original'
  code.mkdir()
  (code / 'modeling_llada.py').write_text('# the original remote code\n')
  (code / 'pytorch_model.bin').write_bytes(b'not copied')
  with open(os.path.join(hf_dir, 'config.json')) as f:
    (code / 'config.json').write_text(json.dumps(dict(json.load(f), auto_map={'AutoModel': 'x'})))
  out = str(tmp_path / 'job_out')
  c = _config('export', checkpoint=lladax_dir, **{'export.output': out,
                                                  'export.copy_from': str(code)})
  assert jobs.run(c) == out
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'modeling_llada.py',
                                     'tokenizer.json']
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['auto_map'] == {'AutoModel': 'x'}  # the template is copy_from's config
  with pytest.raises(ConfigError, match='already exists'):
    jobs.run(c)
  assert sorted(os.listdir(tmp_path)) == ['job_out', 'original']


def test_export_refuses_what_pytorch_llada_cannot_express(bf16, tmp_path):
  _, _, lladax_dir, _ = bf16
  model, meta = saved_model.load_model(lladax_dir)
  model.cfg = dataclasses.replace(model.cfg, rope_position_scale=0.5)
  interpolated = saved_model.save_model(str(tmp_path / 'interpolated'), model, meta)
  with pytest.raises(ConfigError, match='rope_position_scale=0.5'):
    export.export(interpolated, str(tmp_path / 'out'))
  assert not [f for f in os.listdir(tmp_path) if f.startswith('out')]  # nor a temporary folder
  with pytest.raises(ConfigError, match='config.export.output'):
    jobs.run(_config('export', checkpoint=lladax_dir))
