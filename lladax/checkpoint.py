"""Model checkpoints for use: parameters (orbax) beside the model config (JSON).

Layout of a model directory:
  model_config.json   the ModelConfig the parameters belong to (RoPE base already applied)
  params/             orbax PyTree checkpoint of the nnx.Param state
Writes go to a temporary sibling that is renamed when complete, so a directory is never half
written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import orbax.checkpoint as ocp
from flax import nnx

from lladax import model as model_lib
from lladax.config import ConfigError, from_section
from lladax.model_config import ModelConfig

CONFIG_FILE = 'model_config.json'


def save_model(path: str, model: model_lib.LLaDA, extra: dict | None = None) -> str:
  path = os.path.abspath(path)
  tmp = path + '.tmp'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
    json.dump({'model': dataclasses.asdict(model.cfg), **(extra or {})}, f, indent=2)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, 'params'), nnx.state(model, nnx.Param))
  if os.path.exists(path):
    shutil.rmtree(path)
  os.rename(tmp, path)
  return path


def read_config(path: str) -> tuple[ModelConfig, dict]:
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise ConfigError(f'{path} is not a lladax model directory (no {CONFIG_FILE}); pass the '
                      'folder a train or convert job wrote.')
  with open(file) as f:
    meta = json.load(f)
  return from_section(ModelConfig, meta.pop('model'), f'{file}: model'), meta


def load_model(path: str, **overrides) -> tuple[model_lib.LLaDA, dict]:
  """The model stored at `path`, ready for logits, likelihood and sampling.

  `overrides` replace ModelConfig fields that do not change parameter shapes (dtype,
  attention_kernel, rope_theta, ...), e.g. to apply a training-free RoPE rule at evaluation.
  """
  cfg, meta = read_config(path)
  cfg = dataclasses.replace(cfg, **overrides)
  abstract = model_lib.abstract(cfg)
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(path), 'params'), abstract_params)
  return nnx.merge(graphdef, params, rest), meta
