"""The lm-evaluation-harness adapter without lm-eval installed: its three methods called with
request-like objects, and its registration against a stand-in lm_eval package."""
import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import model as model_lib, sampler
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import lm_eval_adapter
from tests.test_eval_common import tiny_checkpoint, tiny_model_config  # noqa: F401 (fixture)


class Request:
  """What lm-eval hands a model: an object whose .args holds the request's arguments."""

  def __init__(self, *args):
    self.args = args


class CharTokenizer:
  """One character per id (id i <-> chr(0x100 + i)): every id sequence survives decode/encode,
  so any continuation the sampler picks can be sent back as text."""
  vocab_size = 264

  def encode(self, text):
    return [ord(c) - 0x100 for c in text]

  def decode(self, ids):
    return ''.join(chr(0x100 + int(i)) for i in ids)


@pytest.fixture(scope='module')
def lm():
  model = model_lib.init(tiny_model_config(), seed=11)
  return lm_eval_adapter.LladaxLM(model=model, tokenizer=CharTokenizer(), mc_num='8',
                                  mc_batch='4', greedy_check='True', block_length='4')


def text(s):
  return CharTokenizer().decode(s.encode())


def test_loglikelihood_is_the_diffusion_bound_with_trailing_spaces_moved(lm):
  # CharTokenizer's space is not str.isspace(), so use a real one for the trailing-space rule.
  lm.tokenizer = tokenizers.ByteTokenizer()
  try:
    (a, _), (b, _) = lm.loglikelihood([Request('Hello ', 'world'), ('Hello', ' world')])
    prompt, answer = lm._encode_pair('Hello ', 'world')
  finally:
    lm.tokenizer = CharTokenizer()
  assert a == b and a < 0 and math.isfinite(a)
  assert answer == list(b' world') and prompt == [lm.model.cfg.bos_token_id] + list(b'Hello')
  (empty, greedy), = lm.loglikelihood([Request(text('Hello'), '')])
  assert empty == 0.0 and greedy is False


def test_is_greedy_only_for_the_samplers_own_continuation(lm):
  cfg = sampler.SamplerConfig(gen_length=3, block_length=3, steps=3)
  context = text('The context')
  prompt = [lm.model.cfg.bos_token_id] + lm.tokenizer.encode(context)
  out = np.asarray(sampler.generate(lm.model, jnp.asarray([prompt]), jax.random.key(0), cfg))
  ids = out[0, len(prompt):].tolist()
  own = lm.tokenizer.decode(ids)
  other = lm.tokenizer.decode(ids[:-1] + [(ids[-1] + 1) % 250])
  (_, greedy), (_, not_greedy) = lm.loglikelihood([Request(context, own), Request(context, other)])
  assert greedy is True and not_greedy is False


def test_rolling_loglikelihood_sums_windows(lm):
  lm.rolling_window = 4
  total, = lm.loglikelihood_rolling([Request(text('abcdefghij'))])
  bos = [lm.model.cfg.bos_token_id]
  parts = [lm._score(bos + list(b'abcdefghij'[:s]), list(b'abcdefghij'[s:s + 4]))
           for s in (0, 4, 8)]
  assert total == pytest.approx(sum(parts)) and total < 0


def test_generate_until_honours_max_gen_toks_and_stop_strings(lm):
  free, = lm.generate_until([Request(text('Once upon'), {'max_gen_toks': 6})])
  assert 0 < len(free) <= 6  # one character per token
  stop = free[min(2, len(free) - 1)]
  cut, = lm.generate_until([Request(text('Once upon'), {'until': [stop], 'max_gen_toks': 6})])
  assert stop not in cut and free.startswith(cut)


def test_loads_a_checkpoint_from_model_args_strings(tiny_checkpoint):
  lm = lm_eval_adapter.LladaxLM(checkpoint=tiny_checkpoint, mc_num='4', mc_batch='2',
                                rope_theta='40000', device='cuda', max_batch_size='8')
  assert lm.model.cfg.rope_theta == 40000.0 and isinstance(lm.tokenizer, tokenizers.ByteTokenizer)
  with pytest.raises(ConfigError, match='needs checkpoint=DIR'):
    lm_eval_adapter.LladaxLM()


def test_registers_as_an_lm_eval_model(monkeypatch):
  registry = types.ModuleType('lm_eval.api.registry')
  registry.MODEL_REGISTRY = {}

  def register_model(name):
    def add(cls):
      registry.MODEL_REGISTRY[name] = cls
      return cls
    return add

  registry.register_model = register_model
  model_module = types.ModuleType('lm_eval.api.model')

  class LM:
    def __init__(self):
      self.initialised_by_lm_eval = True

  model_module.LM = LM
  api = types.ModuleType('lm_eval.api')
  api.model, api.registry = model_module, registry
  package = types.ModuleType('lm_eval')
  package.api = api
  for name, module in (('lm_eval', package), ('lm_eval.api', api),
                       ('lm_eval.api.model', model_module), ('lm_eval.api.registry', registry)):
    monkeypatch.setitem(sys.modules, name, module)
  cls = lm_eval_adapter.harness_class()
  assert registry.MODEL_REGISTRY['lladax'] is cls and issubclass(cls, LM)
  assert issubclass(cls, lm_eval_adapter.LladaxLM)
  assert lm_eval_adapter.harness_class() is cls  # registered once


def test_without_lm_eval_the_harness_class_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'lm_eval', None)
  with pytest.raises(ConfigError, match='pip install lm-eval'):
    lm_eval_adapter.harness_class()
