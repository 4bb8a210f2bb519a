"""Importing PyTorch LLaDA checkpoints: logits parity with an independent PyTorch implementation,
the CLI, every refusal, and bounded host memory."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_llada as tl
from safetensors.torch import load_file, save_file
from test_tokenizers import BOS, EOT, write_tokenizer

from lladax import jobs, saved_model
from lladax.config import ConfigError
from lladax.hf import convert, export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_hf(directory, dtype=torch.float32, n_shards=3, fmt='safetensors', seed=0, **config):
  """A random tiny LLaDA in the HF layout, with a tokenizer.json; returns the torch model."""
  c = tl.tiny_config(**config)
  model = tl.random_model(c, seed)
  tl.save_pretrained(model, str(directory), n_shards, dtype, fmt)
  write_tokenizer(os.path.join(directory, 'tokenizer.json'))
  return model.to(dtype)


def torch_logits(model, ids, **config):
  """Logits of `model`'s weights under a changed config (e.g. rope_theta), as float32 numpy."""
  if config:
    other = tl.LLaDA(dict(model.c, **config)).to(next(model.parameters()).dtype)
    other.load_state_dict(model.state_dict())
    model = other
  with torch.no_grad():
    return model(torch.as_tensor(ids)).float().numpy()


def lladax_logits(path, ids, **overrides):
  model, _ = saved_model.load_model(path, **overrides)
  return np.asarray(model(jnp.asarray(ids)))


def ids_of(length, batch=2, seed=0):
  return np.random.default_rng(seed).integers(0, 290, (batch, length))


@pytest.fixture(scope='module')
def f32(tmp_path_factory):
  root = tmp_path_factory.mktemp('f32')
  model = make_hf(root / 'hf')
  return model, str(root / 'hf'), convert.convert(str(root / 'hf'), str(root / 'lladax'))


# max_sequence_length is 32: (b) runs past it, as PyTorch does by extending its RoPE table; (c) is
# LongLLaDA's training-free extrapolation, rope_theta x4 and nothing else changed.
@pytest.mark.parametrize('length,theta_scale', [(12, 1), (48, 1), (48, 4)],
                         ids=['short', 'beyond_max_sequence_length', 'rope_theta_x4'])
def test_float32_logits_match_pytorch(f32, length, theta_scale):
  model, _, path = f32
  ids = ids_of(length)
  theta = model.c['rope_theta'] * theta_scale
  want = torch_logits(model, ids, rope_theta=theta)
  got = lladax_logits(path, ids, rope_theta=theta)
  assert got.shape == want.shape == (2, length, 300)
  assert np.abs(got - want).max() <= 1e-4
  if theta_scale != 1:  # the override matters: the unscaled model is measurably different
    assert np.abs(lladax_logits(path, ids) - want).max() > 1e-3


def test_rope_theta_through_dataclasses_replace(f32):
  model, _, path = f32
  loaded, _ = saved_model.load_model(path)
  loaded.cfg = dataclasses.replace(loaded.cfg, rope_theta=4 * model.c['rope_theta'])
  ids = ids_of(40)
  want = torch_logits(model, ids, rope_theta=4 * model.c['rope_theta'])
  assert np.abs(np.asarray(loaded(jnp.asarray(ids))) - want).max() <= 1e-4


def test_bfloat16_logits_match_pytorch_within_bf16_rounding(tmp_path):
  # Stated tolerance: both sides compute in bf16 (PyTorch's bf16 inference dtype flow); on logits
  # of magnitude ~4 they differ by at most 0.1 (a few bf16 ulps) and 0.015 on average, and
  # lladax's error against float32 is no larger than 1.5x PyTorch's own bf16 error.
  model = make_hf(tmp_path / 'hf', torch.bfloat16, torch_dtype='bfloat16')
  path = convert.convert(str(tmp_path / 'hf'), str(tmp_path / 'lladax'))
  cfg, _ = saved_model.read_config(path)
  assert (cfg.param_dtype, cfg.dtype) == ('bfloat16', 'bfloat16')
  ids = ids_of(24)
  want, got = torch_logits(model, ids), lladax_logits(path, ids)
  exact = torch_logits(model.float(), ids)
  assert np.abs(got - want).max() <= 0.1
  assert np.abs(got - want).mean() <= 0.015
  assert np.abs(got - exact).max() <= 1.5 * np.abs(want - exact).max()
  # The same checkpoint in float32 compute is float32-exact against PyTorch on bf16 weights.
  got32 = lladax_logits(path, ids, param_dtype='float32', dtype='float32')
  assert np.abs(got32 - exact).max() <= 1e-4


def test_grouped_query_attention_and_tied_head(tmp_path):
  model = make_hf(tmp_path / 'hf', n_shards=2, n_kv_heads=2, weight_tying=True)
  path = convert.convert(str(tmp_path / 'hf'), str(tmp_path / 'lladax'))
  cfg, _ = saved_model.read_config(path)
  assert (cfg.kv_heads, cfg.weight_tying) == (2, True)
  ids = ids_of(16)
  assert np.abs(lladax_logits(path, ids) - torch_logits(model, ids)).max() <= 1e-4
  exported = export.export(path, str(tmp_path / 'exported'))
  original = {}
  for file in os.listdir(tmp_path / 'hf'):
    if file.endswith('.safetensors'):
      original.update(load_file(str(tmp_path / 'hf' / file)))
  again = load_file(os.path.join(exported, 'model.safetensors'))
  assert 'model.transformer.ff_out.weight' not in again  # tied: no head tensor
  assert sorted(again) == sorted(original)
  assert all(torch.equal(again[k], original[k]) for k in original)


def test_pytorch_bin_shards(tmp_path):
  model = make_hf(tmp_path / 'hf', fmt='bin')
  path = convert.convert(str(tmp_path / 'hf'), str(tmp_path / 'lladax'))
  ids = ids_of(16)
  assert np.abs(lladax_logits(path, ids) - torch_logits(model, ids)).max() <= 1e-4


class _Payload:
  """Pickles to a call that would create a file: proof of whether the loader ran pickled code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_bin_with_pickled_code_is_refused_without_running_it(tmp_path):
  make_hf(tmp_path / 'hf', n_shards=1, fmt='bin')
  file = tmp_path / 'hf' / 'pytorch_model-00001-of-00001.bin'
  state = torch.load(file, weights_only=True)
  state['model.transformer.ln_f.weight'] = _Payload(str(tmp_path / 'pwned'))
  torch.save(state, file)
  with pytest.raises(ConfigError, match='weights_only'):
    convert.convert(str(tmp_path / 'hf'), str(tmp_path / 'lladax'))
  assert not (tmp_path / 'pwned').exists()


def test_config_special_ids_and_tokenizer_come_from_the_checkpoint(f32):
  _, hf_dir, path = f32
  cfg, meta = saved_model.read_config(path)
  with open(os.path.join(hf_dir, 'config.json')) as f:
    hf = json.load(f)
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads,
          cfg.mlp_hidden_size, cfg.max_sequence_length, cfg.rope_theta, cfg.rms_norm_eps,
          cfg.weight_tying) == (hf['embedding_size'], hf['d_model'], hf['n_layers'],
                                hf['n_heads'], hf['n_kv_heads'], hf['mlp_hidden_size'],
                                hf['max_sequence_length'], hf['rope_theta'],
                                hf['rms_norm_eps'], hf['weight_tying'])
  assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
      hf['mask_token_id'], hf['eos_token_id'], hf['pad_token_id'])
  # Not in config.json: found in tokenizer.json by token string.
  assert (cfg.bos_token_id, cfg.eot_token_id) == (BOS, EOT)
  with open(os.path.join(path, saved_model.CONFIG_FILE)) as f:
    assert json.load(f)['tokenizer'] == {'kind': 'hf', 'path': 'tokenizer.json'}
  assert meta['tokenizer'] == {'kind': 'hf', 'path': os.path.join(path, 'tokenizer.json')}
  assert os.path.exists(meta['tokenizer']['path'])
  assert meta['hf']['config'] == hf
  assert sorted(os.listdir(os.path.dirname(path))) == ['hf', 'lladax']  # no temporaries left


def _config(recipe, **sections):
  sys.path.insert(0, REPO)
  try:
    module = __import__(f'configs.{recipe}', fromlist=['get_config'])
  finally:
    sys.path.remove(REPO)
  c = module.get_config()
  for key, value in sections.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_convert_job_then_generate_job(f32, tmp_path):
  _, hf_dir, _ = f32
  out = str(tmp_path / 'converted')
  assert jobs.run(_config('convert', **{'convert.source': hf_dir, 'convert.output': out})) == out
  c = _config('convert', job='generate', checkpoint=out, **{
      'sample.prompt': 'Hi', 'sample.gen_length': 4, 'sample.block_length': 4,
      'sample.steps': 4})
  assert isinstance(jobs.run(c), str)
  with pytest.raises(ConfigError, match='already exists'):
    jobs.run(_config('convert', **{'convert.source': hf_dir, 'convert.output': out}))


def test_command_line_reports_a_bad_checkpoint_in_one_sentence(tmp_path):
  (tmp_path / 'hf').mkdir()
  proc = subprocess.run(
      [sys.executable, '-m', 'lladax.main', '--config', 'configs/convert.py',
       f'--config.convert.source={tmp_path / "hf"}', f'--config.convert.output={tmp_path / "out"}'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO), capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'has no config.json; point config.convert.source at a Hugging Face' in proc.stderr


# ---- refusals: each names the offending thing and leaves no output behind ----

@pytest.fixture(scope='module')
def small_hf(tmp_path_factory):
  directory = tmp_path_factory.mktemp('small') / 'hf'
  make_hf(directory, n_shards=2, n_layers=2)
  return directory


@pytest.fixture
def hf(small_hf, tmp_path):
  shutil.copytree(small_hf, tmp_path / 'hf')
  return tmp_path / 'hf'


def _convert_fails(hf_dir, match):
  out = os.path.join(os.path.dirname(hf_dir), 'out')
  with pytest.raises(ConfigError, match=match) as e:
    convert.convert(str(hf_dir), out)
  assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith('out')]  # nor a temp
  return str(e.value)


def _edit_config(hf_dir, **changes):
  file = os.path.join(hf_dir, 'config.json')
  with open(file) as f:
    c = json.load(f)
  for k, v in changes.items():
    if v is _DELETE:
      del c[k]
    else:
      c[k] = v
  with open(file, 'w') as f:
    json.dump(c, f)


_DELETE = object()


def _edit_tensors(hf_dir, edit):
  """Applies `edit(state)` to the whole state dict and rewrites shards and index."""
  index_file = os.path.join(hf_dir, 'model.safetensors.index.json')
  with open(index_file) as f:
    index = json.load(f)
  files = sorted(set(index['weight_map'].values()))
  state = {}
  for file in files:
    state.update(load_file(os.path.join(hf_dir, file)))
  edit(state)
  names = list(state)
  index['weight_map'] = {}
  for i, file in enumerate(files):
    part = {k: state[k].contiguous() for k in names[i::len(files)]}
    save_file(part, os.path.join(hf_dir, file), metadata={'format': 'pt'})
    index['weight_map'].update({k: file for k in part})
  with open(index_file, 'w') as f:
    json.dump(index, f)


@pytest.mark.parametrize('field,value', [
    ('block_type', 'sequential'), ('activation_type', 'swiglu'), ('include_bias', True),
    ('include_qkv_bias', True), ('alibi', True), ('attention_layer_norm', True),
    ('layer_norm_type', 'default'), ('rope_scaling', {'type': 'linear', 'factor': 2.0}),
    ('model_type', 'lladamoe'), ('block_type', _DELETE)])
def test_unsupported_config_field(hf, field, value):
  _edit_config(hf, **{field: value})
  message = _convert_fails(hf, field)
  assert message.count('.') >= 1 and 'config.json' in message


def test_embedding_smaller_than_tokenizer(hf):
  write_tokenizer(os.path.join(hf, 'tokenizer.json'), extra_tokens=20)  # 310 tokens > 300 rows
  _convert_fails(hf, r'310 tokens but the embedding has 300 rows')


def test_missing_tensor(hf):
  _edit_tensors(hf, lambda s: s.pop('model.transformer.blocks.1.up_proj.weight'))
  _convert_fails(hf, r'model\.transformer\.blocks\.1\.up_proj\.weight \(shape \[96, 64\]\) is '
                     'missing')


def test_unexpected_fused_tensor(hf):
  _edit_tensors(hf, lambda s: s.update(
      {'model.transformer.blocks.0.att_proj.weight': torch.zeros(192, 64)}))
  _convert_fails(hf, r'unexpected tensor model\.transformer\.blocks\.0\.att_proj\.weight')


def test_wrong_shape(hf):
  _edit_tensors(hf, lambda s: s.update(
      {'model.transformer.blocks.0.q_proj.weight': torch.zeros(64, 32)}))
  _convert_fails(hf, r'blocks\.0\.q_proj\.weight has shape \[64, 32\] but config\.json implies '
                     r'\[64, 64\]')


def test_wrong_dtype(hf):
  _edit_tensors(hf, lambda s: s.update({'model.transformer.ln_f.weight': s[
      'model.transformer.ln_f.weight'].half()}))
  _convert_fails(hf, r'ln_f\.weight is F16 but the checkpoint is F32')


def test_truncated_shard(hf):
  file = os.path.join(hf, 'model-00002-of-00002.safetensors')
  size = os.path.getsize(file)
  with open(file, 'r+b') as f:
    f.truncate(size - 100)
  _convert_fails(hf, r'model-00002-of-00002\.safetensors is truncated: tensor .* ends at byte')


def test_missing_shard(hf):
  os.remove(os.path.join(hf, 'model-00001-of-00002.safetensors'))
  _convert_fails(hf, r'in model-00001-of-00002\.safetensors, which does not exist')


def test_failure_while_writing_leaves_nothing(hf, monkeypatch):
  reads = []
  original = convert.SafetensorsShard.read

  def failing_read(self, name, rows=None):
    reads.append(name)
    if len(reads) > 5:
      raise OSError('disk went away')
    return original(self, name, rows)
  monkeypatch.setattr(convert.SafetensorsShard, 'read', failing_read)
  out = os.path.join(os.path.dirname(hf), 'out')
  with pytest.raises(OSError, match='disk went away'):
    convert.convert(str(hf), out)
  assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith('out')]  # nor a temp


# ---- bounded memory ----

# Converts a 2-layer checkpoint first (warming up orbax, tensorstore and the allocator on the same
# code path), then resets the peak RSS (Linux clear_refs) and measures the big conversion alone;
# VmHWM, not ru_maxrss: after fork+exec ru_maxrss also counts the parent's (pytest's) peak.
_CHILD = textwrap.dedent('''
    import json, sys
    from lladax.hf import convert

    def status(key):
      with open('/proc/self/status') as f:
        return int(dict(line.split(':', 1) for line in f)[key].split()[0]) * 1024

    small, big, out = sys.argv[1:]
    convert.convert(small, out + '_warmup')
    before = status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # resets VmHWM, the peak RSS, to the current RSS
    convert.convert(big, out)
    print(json.dumps({'before': before, 'peak': status('VmHWM')}))
''')


def synthetic_checkpoint(directory, n_layers, d=512, f=2048, vocab=2048, n_heads=8, n_shards=4):
  """A bf16 LLaDA checkpoint written tensor by tensor (random values, one draw per shape); returns
  (total bytes, largest tensor bytes, one stacked ff parameter's bytes). Also the benchmark's:
    PYTHONPATH=.:tests python -c "import test_convert as t; t.synthetic_checkpoint('/tmp/llada1b',
        n_layers=16, d=2048, f=5632, vocab=126464, n_heads=16)"
  """
  from lladax.hf import export  # pylint: disable=import-outside-toplevel
  from lladax.hf import params as hf_params
  hf = tl.tiny_config(d_model=d, n_heads=n_heads, n_kv_heads=n_heads, n_layers=n_layers,
                      mlp_hidden_size=f, vocab_size=vocab, embedding_size=vocab,
                      mask_token_id=vocab - 3, eos_token_id=vocab - 2, pad_token_id=vocab - 2,
                      torch_dtype='bfloat16')
  cfg = hf_params.config_from_hf(hf, param_dtype='bfloat16', dtype='bfloat16')
  rng = np.random.default_rng(0)
  bf16 = hf_params.SAFETENSORS_DTYPES['BF16']
  draws = {}
  tensors = []
  for name, shape in hf_params.expected_tensors(cfg).items():
    if shape not in draws:
      draws[shape] = rng.standard_normal(shape, np.float32).astype(bf16)
    tensors.append((name, shape, draws[shape].dtype, lambda a=draws[shape]: [a]))
  os.makedirs(directory)
  weight_map = {}
  for i in range(n_shards):
    file = f'model-{i + 1:05d}-of-{n_shards:05d}.safetensors'
    export.write_safetensors(os.path.join(directory, file), tensors[i::n_shards])
    weight_map.update({t[0]: file for t in tensors[i::n_shards]})
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as fh:
    json.dump({'weight_map': weight_map}, fh)
  with open(os.path.join(directory, 'config.json'), 'w') as fh:
    json.dump(hf, fh)
  largest = max(int(np.prod(s)) * 2 for _, s, _, _ in tensors)
  return sum(int(np.prod(s)) * 2 for _, s, _, _ in tensors), largest, d * f * 2 * n_layers


def _conversion_rss(small, big, output):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-c', _CHILD, str(small), str(big), str(output)],
                       env=env, capture_output=True, text=True, check=False, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux clear_refs')
def test_conversion_memory_is_bounded_by_tensors_not_the_model(tmp_path):
  # 32 layers of <= 2 MiB tensors: the checkpoint is >100x its largest tensor and 4x a stacked
  # parameter. Holding any one stacked parameter would add 64 MiB; the whole model 260 MiB.
  total, largest, stacked = synthetic_checkpoint(tmp_path / 'big', n_layers=32)
  synthetic_checkpoint(tmp_path / 'small', n_layers=2)
  assert total > 100 * largest
  rss = _conversion_rss(tmp_path / 'small', tmp_path / 'big', tmp_path / 'out')
  extra = rss['peak'] - rss['before']
  mib = 2**20
  report = (f'checkpoint {total / mib:.0f} MiB, largest tensor {largest / mib:.0f} MiB, stacked '
            f'parameter {stacked / mib:.0f} MiB: peak RSS {rss["peak"] / mib:.0f} MiB, '
            f'{extra / mib:.1f} MiB above the RSS before converting')
  print(report)
  assert extra < stacked / 2, report
