"""Shared fixtures of the evaluation tests: a tiny saved checkpoint and recipe builders."""
import dataclasses

import pytest
from helpers import repo_module

from lladax import model as model_lib, presets, saved_model
from lladax.config import from_section
from lladax.model_config import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
  """A ~30K-parameter byte-level LLaDA: fast enough to decode a few hundred tokens in tests."""
  shape = dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64, max_sequence_length=64)
  shape.update(overrides)
  return from_section(ModelConfig, presets.tiny_model(**shape), 'tiny')


def save_tiny(path, seed=0, **overrides) -> str:
  model = model_lib.init(tiny_model_config(**overrides), seed)
  return saved_model.save_model(str(path), model, {'tokenizer': {'kind': 'bytes', 'path': ''}})


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
  return save_tiny(tmp_path_factory.mktemp('ckpt') / 'model')


def recipe(name: str, workdir, **sections):
  """configs/<name>.py with the byte tokenizer, float32 compute and section overrides."""
  c = repo_module('configs', f'{name}.py').get_config()
  c.workdir = str(workdir)
  c.tokenizer = presets.byte_tokenizer()
  c.model.update(dtype='float32', param_dtype='float32')
  for section, values in sections.items():
    if isinstance(values, dict):
      c[section].update(values)
    else:
      c[section] = values
  return c


def test_tiny_checkpoint_round_trips(tiny_checkpoint):
  cfg, meta = saved_model.read_config(tiny_checkpoint)
  assert dataclasses.asdict(cfg) == dataclasses.asdict(tiny_model_config())
  assert meta['tokenizer']['kind'] == 'bytes'
