"""Building blocks for recipes in configs/: every section starts from the defaults of the dataclass
that reads it, so a recipe lists only what it changes and a default is documented in one place."""
from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from lladax.config import section_class
from lladax.data import tokenizers
from lladax.model_config import ModelConfig

# The sections every recipe starts with (config.SECTIONS names the dataclass of each); a recipe
# adds the others it needs with `section`.
BASE_SECTIONS = ('model', 'rope', 'tokenizer', 'data', 'optim', 'train', 'sample')


def _field_type(annotation):
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  return args[0] if args else annotation


def section(cls, **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict holding every field of dataclass `cls` at its default, then `overrides`."""
  hints = typing.get_type_hints(cls)
  values = {}
  for f in dataclasses.fields(cls):
    value = overrides.pop(f.name, f.default)
    if value is None:
      value = config_dict.placeholder(_field_type(hints[f.name]))
    values[f.name] = value
  if overrides:
    raise KeyError(f'{cls.__name__} has no field(s) {sorted(overrides)}')
  return ml_collections.ConfigDict(values)


def base(job: str) -> ml_collections.ConfigDict:
  """Every section at its defaults; the model is LLaDA-8B."""
  c = ml_collections.ConfigDict()
  c.job = job
  c.seed = 0
  c.workdir = ''        # where jobs write (metrics, models); '' writes nothing
  c.checkpoint = ''     # a lladax model directory to load (generate and evaluation jobs)
  for name in BASE_SECTIONS:
    c[name] = section(section_class(name, job))
  c.sample.prompt = ''  # text to continue, for the generate job (config.SECTION_INPUTS)
  return c


def tiny_model(**overrides) -> ml_collections.ConfigDict:
  """A LLaDA-shaped model of ~0.9M parameters over the byte tokenizer, for CPUs and tests."""
  b = tokenizers.ByteTokenizer
  shape = dict(vocab_size=264, d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384,
               max_sequence_length=64, rope_theta=10000.0, mask_token_id=b.MASK,
               eos_token_id=b.EOS, pad_token_id=b.PAD, bos_token_id=b.BOS, eot_token_id=b.EOT,
               dtype='float32', remat_policy='none')
  shape.update(overrides)
  return section(ModelConfig, **shape)


def pipeline_config():
  """The Grain pipeline's settings class (so recipes need not know the module)."""
  return section_class('pipeline')


def byte_tokenizer() -> ml_collections.ConfigDict:
  return section(tokenizers.TokenizerConfig, kind='bytes')
