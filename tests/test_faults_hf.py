"""Faults around model directories, convert and export: nothing of the user's is deleted, a corrupt
file is named in one sentence instead of loading silently, and bad weights are refused."""
import errno
import json
import logging
import os
import re
import shutil

import pytest
from test_convert import _edit_tensors, make_hf

from lladax import saved_model
from lladax.config import ConfigError
from lladax.hf import convert, export

SHARD = 'model-00001-of-00002.safetensors'


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  root = tmp_path_factory.mktemp('made')
  make_hf(root / 'hf', n_shards=2, n_layers=2)
  return root / 'hf', convert.convert(str(root / 'hf'), str(root / 'model'))


@pytest.fixture
def hf(made, tmp_path):
  return shutil.copytree(made[0], tmp_path / 'hf')


@pytest.fixture
def model(made, tmp_path):
  return str(shutil.copytree(made[1], tmp_path / 'model'))


def _contents(directory):
  """{relative path: bytes} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      with open(os.path.join(root, f), 'rb') as fh:
        out[os.path.relpath(os.path.join(root, f), directory)] = fh.read()
  return out


def _siblings(path):
  parent, name = os.path.split(str(path))
  return sorted(f for f in os.listdir(parent) if f.startswith(name))


# ---- item 1: nothing the job did not create is deleted ----

def test_folders_named_like_a_temporary_output_are_kept(hf, tmp_path, caplog):
  out = tmp_path / 'out'
  for name in ('out.tmp', 'out.tmp-0123abcd'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'mine.txt').write_text('user data')
  with caplog.at_level(logging.WARNING):
    convert.convert(str(hf), str(out))
  for name in ('out.tmp', 'out.tmp-0123abcd'):
    assert (tmp_path / name / 'mine.txt').read_text() == 'user data'
    assert f'{tmp_path / name} was left by an interrupted save' in caplog.text
  assert _siblings(out) == ['out', 'out.tmp', 'out.tmp-0123abcd']
  saved_model.load_model(str(out))


def test_a_leftover_of_a_killed_final_save_does_not_block_the_rerun(made, tmp_path):
  # train's final save is save_model(<workdir>/model, ..., overwrite=True).
  loaded, meta = saved_model.load_model(made[1])
  (tmp_path / 'model.tmp').mkdir()
  (tmp_path / 'model.tmp' / 'half').write_text('x')
  saved_model.save_model(str(tmp_path / 'model'), loaded, meta)
  saved_model.save_model(str(tmp_path / 'model'), loaded, meta)  # replaces its own output
  assert _siblings(tmp_path / 'model') == ['model', 'model.tmp']
  saved_model.load_model(str(tmp_path / 'model'))


@pytest.mark.parametrize('where', ['same', 'output_inside_source', 'source_inside_output'])
def test_convert_refuses_an_output_that_overlaps_the_source(hf, tmp_path, where):
  before = _contents(tmp_path)
  output = {'same': hf, 'output_inside_source': hf / 'lladax', 'source_inside_output': tmp_path}
  with pytest.raises(ConfigError, match=r'config\.convert\.output=.* (is the same directory as|'
                                        r'is inside|contains) config\.convert\.source=.*; choose'):
    convert.convert(str(hf), str(output[where]), overwrite=True)
  assert _contents(tmp_path) == before


def test_export_refuses_an_output_that_overlaps_its_inputs(model, hf, tmp_path):
  before = _contents(tmp_path)
  with pytest.raises(ConfigError, match=r'config\.export\.output=.* is the same directory as '
                                        r'config\.checkpoint='):
    export.export(model, model, overwrite=True)
  with pytest.raises(ConfigError, match=r'config\.export\.output=.* is the same directory as '
                                        r'config\.export\.copy_from='):
    export.export(model, str(hf), copy_from=str(hf), overwrite=True)
  assert _contents(tmp_path) == before


def test_overwrite_replaces_only_what_the_job_writes(hf, tmp_path):
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'docs' / 'notes.txt').write_text('user data')
  with pytest.raises(ConfigError, match=r'docs is not a directory this job writes \(it has no '
                                        r'model_config\.json\)'):
    convert.convert(str(hf), str(tmp_path / 'docs'), overwrite=True)
  with pytest.raises(ConfigError, match=r'docs is not a directory this job writes \(it has no '
                                        r'config\.json\)'):
    export.export(convert.convert(str(hf), str(tmp_path / 'm')), str(tmp_path / 'docs'),
                  overwrite=True)
  assert (tmp_path / 'docs' / 'notes.txt').read_text() == 'user data'


def test_overwrite_keeps_the_old_output_until_the_new_one_is_in_place(hf, model, tmp_path,
                                                                       monkeypatch):
  before = _contents(model)
  rename = os.rename

  def failing_rename(src, dst):  # the last step: the new directory under the output's name
    if os.fspath(dst) == model and '.tmp' in os.fspath(src):
      raise OSError(errno.EIO, 'rename failed')
    return rename(src, dst)
  monkeypatch.setattr(os, 'rename', failing_rename)
  with pytest.raises(OSError, match='rename failed'):
    convert.convert(str(hf), model, overwrite=True)
  assert _contents(model) == before
  assert _siblings(model) == ['model']
  monkeypatch.setattr(os, 'rename', rename)
  convert.convert(str(hf), model, overwrite=True)
  assert _siblings(model) == ['model']
  saved_model.load_model(model)


def test_a_full_disk_is_one_sentence_and_leaves_nothing(tmp_path):
  with pytest.raises(ConfigError, match=r'the disk is full while writing .*out; free space'):
    with saved_model.staging(str(tmp_path / 'out'), overwrite=False) as tmp:
      with open(os.path.join(tmp, 'part'), 'w') as f:
        f.write('x')
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert os.listdir(tmp_path) == []


# ---- item 2: checksums written with every model directory and verified on load ----

def _flip_byte(file, at=-3):
  with open(file, 'r+b') as f:
    data = bytearray(f.read())
    data[at] ^= 0xFF
    f.seek(0)
    f.write(data)


def _largest_params_file(model):
  files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(model, 'params'))
           for f in names]
  return max(files, key=os.path.getsize)


def test_a_flipped_byte_in_the_final_save_of_training_is_named(made, tmp_path):
  # The train job's final save: save_model (OCDBT), where a flipped byte used to load silently.
  loaded, meta = saved_model.load_model(made[1])
  path = saved_model.save_model(str(tmp_path / 'model'), loaded, meta)
  file = _largest_params_file(path)
  _flip_byte(file, at=os.path.getsize(file) // 2)
  with pytest.raises(ConfigError, match=f'{re.escape(file)} does not match its checksum in '
                                        'checksums.json, so it is corrupt or was changed; write '
                                        'the model directory again'):
    saved_model.load_model(path)


def test_a_missing_params_file_of_a_converted_model_is_named(model):
  file = _largest_params_file(model)
  os.remove(file)
  for load in (saved_model.load_model, lambda p: export.export(p, p + '_hf')):
    with pytest.raises(ConfigError, match=f'{re.escape(file)} is missing .*; write the model '
                                          'directory again'):
      load(model)


def test_an_edited_model_config_is_named(model):
  file = os.path.join(model, saved_model.CONFIG_FILE)
  with open(file) as f:
    meta = json.load(f)
  meta['model']['rope_theta'] *= 2  # still a valid config, so only the checksum can tell
  with open(file, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(ConfigError, match=f'{re.escape(file)} does not match its checksum'):
    saved_model.read_config(model)


def _as_written_before_checksums(model):
  if os.path.exists(os.path.join(model, 'checksums.json')):
    os.remove(os.path.join(model, 'checksums.json'))


def test_a_directory_written_before_checksums_loads_with_a_warning(model, caplog):
  _as_written_before_checksums(model)
  with caplog.at_level(logging.WARNING):
    saved_model.load_model(model)
  assert 'has no checksums.json' in caplog.text and 'unverified' in caplog.text


# ---- item 3: a damaged model directory is one sentence naming the file and the fix ----

@pytest.mark.parametrize('damage', ['garbage', 'no_model_section'])
def test_a_corrupt_model_config_is_one_sentence(model, damage):
  file = os.path.join(model, saved_model.CONFIG_FILE)
  with open(file, 'w') as f:
    f.write('{"model": {"d_model": 6' if damage == 'garbage' else '{"tokenizer": null}')
  with pytest.raises(ConfigError, match=f'{re.escape(file)} is not valid JSON with a "model" '
                                        'section, so the model directory is damaged; write the '
                                        'model directory again'):
    saved_model.load_model(model)


def test_a_missing_params_folder_is_one_sentence(model):
  shutil.rmtree(os.path.join(model, 'params'))
  for load in (saved_model.load_model, saved_model.open_params):
    with pytest.raises(ConfigError, match=f'{re.escape(model)}/params is missing, so the model '
                                          'directory is incomplete; write the model directory '
                                          'again'):
      load(model)


def test_a_corrupt_params_folder_without_checksums_is_one_sentence(model):
  _as_written_before_checksums(model)
  with open(os.path.join(model, 'params', '_METADATA'), 'w') as f:
    f.write('{not json')
  for load in (saved_model.load_model, saved_model.open_params):
    with pytest.raises(ConfigError, match=f'{re.escape(model)}/params cannot be read .*, so the '
                                          'model directory is damaged'):
      load(model)


# ---- item 4: weights that would load silently wrong are refused ----

@pytest.mark.parametrize('value', [float('nan'), float('inf')], ids=['nan', 'inf'])
def test_non_finite_weights_are_refused_naming_the_tensor(hf, tmp_path, value):
  name = 'model.transformer.blocks.1.ff_out.weight'

  def poison(state):
    state[name] = state[name].clone()
    state[name][3, 5] = value
  _edit_tensors(hf, poison)
  with pytest.raises(ConfigError, match=f'tensor {name} holds NaN or Inf values'):
    convert.convert(str(hf), str(tmp_path / 'out'))
  assert _siblings(tmp_path / 'out') == []


def _rewrite_header(file, edit):
  """Applies `edit(header)` to a safetensors header and writes the file back, data unchanged."""
  with open(file, 'rb') as f:
    raw = f.read()
  n = int.from_bytes(raw[:8], 'little')
  header = json.loads(raw[8:8 + n])
  edit(header)
  new = json.dumps(header).encode()
  new += b' ' * (-len(new) % 8)
  with open(file, 'wb') as f:
    f.write(len(new).to_bytes(8, 'little') + new + raw[8 + n:])


def _before_the_data(header):
  name = min((k for k in header if k != '__metadata__'),
             key=lambda k: header[k]['data_offsets'][0])
  begin, end = header[name]['data_offsets']
  header[name]['data_offsets'] = [begin - 16, end - 16]


def _overlapping(header):
  names = sorted((k for k in header if k != '__metadata__'),
                 key=lambda k: header[k]['data_offsets'][0])
  same = [k for k in names if header[k]['shape'] == header[names[-1]]['shape']]
  header[same[-1]]['data_offsets'] = list(header[same[0]]['data_offsets'])


@pytest.mark.parametrize('edit', [_before_the_data, _overlapping], ids=['before_data', 'overlap'])
def test_a_safetensors_header_with_offsets_outside_the_tensors_is_refused(hf, tmp_path, edit):
  file = os.path.join(hf, SHARD)
  _rewrite_header(file, edit)
  with pytest.raises(ConfigError, match=f'{re.escape(file)} fails the safetensors header checks'):
    convert.convert(str(hf), str(tmp_path / 'out'))
  assert _siblings(tmp_path / 'out') == []

