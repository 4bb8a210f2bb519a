"""The lm-evaluation-harness adapter without lm-eval: its three methods called with request-like
objects, its options, and the message when lm-eval is missing (tests/test_lm_eval_harness.py runs
it against LLaDA's own harness and through the real lm-eval)."""
import math
import sys

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

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [ord(c) - 0x100 for c in text]

  def decode(self, ids, skip_special_tokens=False):
    del skip_special_tokens
    return ''.join(chr(0x100 + int(i)) for i in ids)


@pytest.fixture(scope='module')
def lm():
  model = model_lib.init(tiny_model_config(), seed=11)
  return lm_eval_adapter.LladaxLM(model=model, tokenizer=CharTokenizer(), mc_num='8',
                                  batch_size='4', is_check_greedy='True', block_length='4',
                                  gen_length='8', steps='8')


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
  # No BOS: the tokenizer's own special tokens (none), as LLaDA's harness.
  assert answer == list(b' world') and prompt == list(b'Hello')
  (empty, greedy), = lm.loglikelihood([Request(text('Hello'), '')])
  assert empty == 0.0 and greedy is False
  lm.prompt_tokens = 'bos'
  try:
    assert lm._encode_pair(text('Hi'), text('!'))[0] == [lm.model.cfg.bos_token_id] + [
        ord(c) - 0x100 for c in text('Hi')]
  finally:
    lm.prompt_tokens = 'tokenizer'


def test_is_greedy_only_for_the_samplers_own_continuation(lm):
  cfg = sampler.SamplerConfig(gen_length=3, block_length=3, steps=3, mask_prediction='allow')
  context = text('The context')
  prompt = lm.tokenizer.encode(context)
  out = np.asarray(sampler.generate(lm.model, jnp.asarray([prompt]), jax.random.key(0), cfg))
  ids = out[0, len(prompt):].tolist()
  assert lm._greedy_decode(prompt, 3) == ids
  own = lm.tokenizer.decode(ids)
  other = lm.tokenizer.decode(ids[:-1] + [(ids[-1] + 1) % 250])
  (_, greedy), (_, not_greedy) = lm.loglikelihood([Request(context, own), Request(context, other)])
  assert greedy is True and not_greedy is False


def test_rolling_loglikelihood_sums_windows(lm):
  lm.rolling_window = 4
  total, = lm.loglikelihood_rolling([Request(text('abcdefghij'))])
  parts = [lm._score(list(b'abcdefghij'[:s]), list(b'abcdefghij'[s:s + 4])) for s in (0, 4, 8)]
  assert total == pytest.approx(sum(parts)) and total < 0


def test_generate_until_official_uses_the_model_arguments_length(lm):
  """LLaDA's harness: gen_length tokens whatever the request's max_gen_toks, cut at each stop
  string in turn (eval_llada.py's `text.split(stop)[0]`)."""
  free, = lm.generate_until([Request(text('Once upon'), {'max_gen_toks': 2})])
  assert len(free) == 8  # one character per token, none special
  stop = free[min(2, len(free) - 1)]
  cut, = lm.generate_until([Request(text('Once upon'), {'until': [stop], 'max_gen_toks': 2})])
  assert cut == free.split(stop)[0]
  assert lm_eval_adapter.cut_at('abcabc', ['c', 'a']) == '' and \
      lm_eval_adapter.cut_at('abcabc', ['c', 'b']) == 'a'


def test_generate_until_max_gen_toks_mode_honours_the_request(lm):
  lm.until_mode = 'max_gen_toks'
  try:
    free, = lm.generate_until([Request(text('Once upon'), {'max_gen_toks': 6})])
    assert 0 < len(free) <= 6  # one character per token
    stop = free[min(2, len(free) - 1)]
    cut, = lm.generate_until([Request(text('Once upon'), {'until': [stop], 'max_gen_toks': 6})])
    assert stop not in cut and free.startswith(cut)
  finally:
    lm.until_mode = 'official'


def test_loads_a_checkpoint_from_model_args_strings(tiny_checkpoint):
  lm = lm_eval_adapter.LladaxLM(checkpoint=tiny_checkpoint, mc_num='4', batch_size='2',
                                rope_theta='40000', device='cuda', max_batch_size='8')
  assert (lm.mc_num, lm.batch_size) == (4, 2)
  assert lm.model.cfg.rope_theta == 40000.0 and isinstance(lm.tokenizer, tokenizers.ByteTokenizer)
  with pytest.raises(ConfigError, match='needs checkpoint=DIR'):
    lm_eval_adapter.LladaxLM()


def test_without_lm_eval_the_harness_class_says_how_to_get_it(monkeypatch):
  for name in ('lm_eval', 'lm_eval.api', 'lm_eval.api.model', 'lm_eval.api.registry'):
    monkeypatch.setitem(sys.modules, name, None)  # also when another test imported it
  with pytest.raises(ConfigError, match='pip install lm-eval'):
    lm_eval_adapter.harness_class()
