"""The shared evaluation machinery: the resumable store, batching, bucketing and the two model
interfaces (batched generation with left padding, tail cross-entropy)."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from lladax import diffusion, model as model_lib, model_config, sampler
from lladax.config import ConfigError, parse
from lladax.data import tokenizers
from lladax.evals import eval_settings, loading, model_calls, results
from tests.test_eval_common import tiny_model_config


def test_store_resumes_drops_a_torn_last_line_and_refuses_other_settings(tmp_path):
  path = str(tmp_path / 'cells.jsonl')
  store = results.ResultStore(path, {'steps': 32})
  store.add({'length': 100, 'depth': 0.0}, {'score': 1.0})
  store.add({'length': 100, 'depth': 50.0}, {'score': 2.0})
  store.close()
  with open(path, 'a') as f:
    f.write('{"key": {"length": 100, "dep')  # killed mid-write
  again = results.ResultStore(path, {'steps': 32})
  assert len(again) == 2 and {'depth': 50.0, 'length': 100} in again
  assert again.get({'length': 100, 'depth': 0.0}) == {'score': 1.0}
  again.add({'length': 200, 'depth': 0.0}, {'score': 3.0})  # appends after the dropped line
  again.close()
  lines = [json.loads(l) for l in open(path).read().splitlines()]
  assert lines[0] == {'settings': {'steps': 32}} and len(lines) == 4
  with pytest.raises(ConfigError, match='other settings \\(steps;'):
    results.ResultStore(path, {'steps': 16})
  fresh = results.ResultStore(path, {'steps': 16}, resume=False)
  assert len(fresh) == 0


def test_run_cells_skips_finished_cells_and_never_mixes_groups(tmp_path):
  store = results.ResultStore(str(tmp_path / 'c.jsonl'), {})
  cells = [{'length': l, 'i': i} for l in (10, 20) for i in range(5)]
  store.add(cells[1], {'v': -1})
  batches = []

  def compute(batch):
    batches.append([(c['length'], c['i']) for c in batch])
    return [{'v': c['i']} for c in batch]

  rows = results.run_cells(cells, store, compute, 3, 'test', group=lambda c: c['length'])
  assert batches == [[(10, 0), (10, 2), (10, 3)], [(10, 4)], [(20, 0), (20, 1), (20, 2)],
                     [(20, 3), (20, 4)]]
  assert store.get(cells[1]) == {'v': -1} and len(store) == 10
  assert rows[:2] == [{'length': 10, 'i': 0, 'v': 0}, {'length': 10, 'i': 1, 'v': -1}]
  assert store._file.closed  # pylint: disable=protected-access


def test_run_cells_closes_the_store_when_a_batch_fails(tmp_path):
  store = results.ResultStore(str(tmp_path / 'c.jsonl'), {})

  def compute(batch):
    raise RuntimeError('out of memory')

  with pytest.raises(RuntimeError):
    results.run_cells([{'i': 0}], store, compute, 1, 'test')
  assert store._file.closed  # pylint: disable=protected-access


def test_bucket_and_decode_settings():
  assert model_calls.bucket(1, 256) == 256 and model_calls.bucket(257, 256) == 512
  assert model_calls.bucket(100000, 256) == 13 * 8192  # multiples of 1/8 of 65536 here
  assert model_calls.bucket(100000, 256) - 100000 < 100000 / 8
  # Output lengths round up to whole blocks; steps are capped and kept a multiple of the blocks.
  assert eval_settings.decode_settings(30, 64, 64, 'x') == dict(gen_length=64, block_length=64, steps=64)
  assert eval_settings.decode_settings(100, 64, 512, 'x') == dict(gen_length=128, block_length=64,
                                                           steps=128)
  assert eval_settings.decode_settings(128, 32, 6, 'x')['steps'] == 4
  assert eval_settings.decode_settings(32, 32, None, 'x')['steps'] == 32


@pytest.fixture(scope='module')
def tiny():
  return model_lib.init(tiny_model_config(), seed=3)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny):
  tok = tokenizers.ByteTokenizer()
  cfg = sampler.SamplerConfig(gen_length=8, block_length=4, steps=4)
  prompts = ['short', 'a somewhat longer prompt', 'mid length']
  batched = model_calls.ModelGenerator(tiny, tok, batch_size=2, pad_multiple=16).generate(prompts, cfg)
  single = [model_calls.ModelGenerator(tiny, tok, batch_size=1, pad_multiple=8).generate([p], cfg)[0]
            for p in prompts]
  assert batched == single
  keep = model_calls.ModelGenerator(tiny, tok, 1, 8).generate(prompts[:1], cfg, keep=3)[0]
  assert keep == single[0][:3] or len(tok.encode(keep)) <= 3


def test_tail_cross_entropy_equals_full_logits_and_ignores_left_padding(tiny):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, size=(3, 21)).astype(np.int32)
  tokens[:, -4:][rng.random((3, 4)) < 0.5] = tiny.cfg.mask_token_id
  targets = rng.integers(0, 256, size=(3, 4)).astype(np.int32)
  want = diffusion.token_cross_entropy(tiny(jax.numpy.asarray(tokens))[:, -4:], targets)
  got = model_calls.ModelScorer(tiny, batch_size=2, pad_multiple=32).tail_cross_entropy(tokens, targets)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)


def test_a_missing_checkpoint_or_workdir_is_one_sentence(tmp_path):
  from tests.test_eval_common import recipe
  c = recipe('eval_niah', '')
  with pytest.raises(ConfigError, match='config.workdir is empty'):
    results.output_paths(parse(c), parse(c).eval, 'niah')
  with pytest.raises(ConfigError, match='config.checkpoint is empty'):
    loading.load(parse(c))
  c.eval.mesh_hook = 'nowhere'
  with pytest.raises(ConfigError, match='must be "module:function"'):
    parse(c)


def test_mesh_hook_places_model_and_batches_and_wraps_every_call(tiny):
  from tests.test_eval_common import recipe
  c = recipe('eval_niah', '')
  c.eval.mesh_hook = f'{__name__}:_fake_mesh'  # the module object pytest loaded
  model, put, context = loading.place(tiny, parse(c), parse(c).eval)
  assert model is tiny and put(np.zeros((1, 2))).tolist() == [[0.0, 0.0]]
  gen = model_calls.ModelGenerator(model, tokenizers.ByteTokenizer(), 1, 8, put, context)
  gen.generate(['ab', 'cd'], sampler.SamplerConfig(gen_length=4, block_length=4, steps=2))
  assert PUT_CALLS == [(1, 2)] + [(1, 8)] * 4 and ENTERED == [1, 1]  # tokens and mask, twice
  c.eval.mesh_hook = f'{__name__}:_nothing_here'
  with pytest.raises(ConfigError, match='cannot be imported'):
    loading.place(tiny, parse(c), parse(c).eval)


PUT_CALLS, ENTERED = [], []


def _fake_mesh(model, config):
  import contextlib
  del config

  @contextlib.contextmanager
  def context():
    ENTERED.append(1)
    yield

  def put(a):
    PUT_CALLS.append(np.shape(a))
    return jax.numpy.asarray(a)

  return model, put, context


def test_an_eval_job_refuses_the_sample_sections_mask_prediction():
  """Evaluation jobs take mask prediction from the protocol or config.eval, never config.sample,
  so a setting there would otherwise be ignored silently."""
  from lladax import presets  # pylint: disable=import-outside-toplevel
  from lladax.evals import protocols  # pylint: disable=import-outside-toplevel
  c = presets.base('eval_niah')
  c.sample.mask_prediction = 'allow'
  with pytest.raises(ConfigError, match='set config.eval.mask_prediction instead'):
    eval_settings.sampler_settings(parse(c).sample, protocols.GENERATION['longllada'], gen_length=32)
  c.sample.mask_prediction = 'ban'
  scfg = eval_settings.sampler_settings(parse(c).sample, protocols.GENERATION['longllada'], gen_length=32,
                                 block_length=32, steps=32)
  assert scfg.mask_prediction == 'allow'


def test_the_recipes_compute_settings_reach_the_loaded_model():
  # attention_options and remat_policy were dropped on the way to the checkpoint's model; and a
  # kernel other than the checkpoint's must not inherit the checkpoint's kernel options.
  saved = model_config.ModelConfig(attention_kernel='ring',
                                   attention_options=('step_kernel=blockwise',))
  recipe_ = model_config.ModelConfig(attention_kernel='blockwise', attention_options=('block_q=64',),
                                     remat_policy='none', dtype='float32', param_dtype='bfloat16')
  overrides = model_config.compute_overrides
  assert overrides(recipe_, saved) == dict(
      attention_kernel='blockwise', attention_options=('block_q=64',), remat_policy='none',
      dtype='float32', param_dtype='bfloat16', scan_layers=True)
  recipe_ = dataclasses.replace(recipe_, attention_options=())
  assert overrides(recipe_, saved)['attention_options'] == ()
  same = model_config.ModelConfig(attention_kernel='ring')
  assert 'attention_options' not in overrides(same, saved)
