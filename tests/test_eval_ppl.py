"""Perplexity against length: both estimators' arithmetic, agreement with
lladax.diffusion.log_likelihood, the running geometric mean, and the job end to end."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lladax import diffusion, jobs, model as model_lib
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import lm_eval_adapter, model_calls, perplexity
from tests.test_eval_common import recipe, tiny_checkpoint, tiny_model_config  # noqa: F401


class ConstantScorer:
  """CE of every token = log(vocab): a uniform model, whose perplexity is exactly the vocab."""
  mask_id, bos_id = 258, None

  def __init__(self, vocab=50):
    self.vocab, self.rows = vocab, []

  def tail_cross_entropy(self, tokens, targets):
    self.rows.append(tokens.copy())
    return np.full(targets.shape, math.log(self.vocab))


def test_longllada_masks_one_to_chunk_positions_per_row():
  masks = perplexity.longllada_masks(jax.random.key(0), 64, 256)
  counts = masks.sum(1)
  assert masks.shape == (256, 64) and counts.min() >= 1 and counts.max() <= 64
  assert len(set(counts.tolist())) > 20  # k ~ U{1..64}, not a constant


def test_llada_masks_are_diffusion_log_likelihoods_stratified_counts():
  masks = perplexity.llada_masks(jax.random.key(1), 16, 8, 4)
  key_k = jax.random.split(jax.random.split(jax.random.key(1), 2)[0])[0]
  want = diffusion.stratified_mask_counts(key_k, 16, 4)
  np.testing.assert_array_equal(masks[:4].sum(1), np.asarray(want))


@pytest.mark.parametrize('estimator', ['longllada', 'llada'])
def test_a_uniform_model_has_perplexity_equal_to_its_vocabulary(estimator):
  scorer = ConstantScorer(vocab=50)
  masks = (perplexity.longllada_masks(jax.random.key(0), 8, 8) if estimator == 'longllada'
           else perplexity.llada_masks(jax.random.key(0), 8, 8, 4))
  loss = perplexity.chunk_loss(scorer, np.arange(16), np.arange(8), masks, estimator, 4)
  assert math.exp(loss) == pytest.approx(50)
  rows = scorer.rows[0]
  assert rows.shape == (8, 24)
  # The prefix is never masked; exactly the masked chunk positions carry the mask id.
  np.testing.assert_array_equal(rows[:, :16], np.broadcast_to(np.arange(16), (8, 16)))
  np.testing.assert_array_equal(rows[:, 16:] == 258, masks)


def test_llada_estimator_equals_diffusion_log_likelihood():
  model = model_lib.init(tiny_model_config(), seed=5)
  scorer = model_calls.ModelScorer(model, batch_size=8, pad_multiple=64)
  rng = np.random.default_rng(0)
  prefix, answer = rng.integers(0, 256, 20), rng.integers(0, 256, 8)
  key = jax.random.key(7)
  masks = perplexity.llada_masks(key, 8, 8, 4)
  per_token = perplexity.chunk_loss(scorer, prefix, answer, masks, 'llada', 4)
  # lm_eval_adapter's jitted wrapper of diffusion.log_likelihood (the same function, compiled).
  graphdef, state = nnx.split(model)
  want = lm_eval_adapter._log_likelihood(graphdef, state, jnp.asarray(prefix), jnp.asarray(answer),
                                         key, model.cfg.mask_token_id, 8, 4, 0.0)
  assert per_token * 8 == pytest.approx(-float(want), rel=1e-4)


def test_running_geometric_mean_and_values_at_lengths():
  xs, ys = perplexity.curve({1: math.log(2), 2: math.log(8), 3: math.log(1)}, 64)
  assert xs == [128, 192, 256]
  assert ys == pytest.approx([2, 4, 16 ** (1 / 3)])
  assert perplexity.at_lengths(xs, ys, [192, 200, 100]) == {'192': pytest.approx(4),
                                                            '200': pytest.approx(4),
                                                            '100': pytest.approx(math.nan,
                                                                                 nan_ok=True)}
  cfg = perplexity.PplConfig(lengths=(256,), chunk=32, chunk_stride=3)
  assert perplexity.chunk_indices(256, cfg) == [1, 4, 7]


def test_job_on_a_tiny_checkpoint_writes_curves_and_resumes(tmp_path, tiny_checkpoint):
  text = tmp_path / 'doc.txt'
  text.write_text(' '.join(f'word{i % 97}' for i in range(200)))
  c = recipe('eval_ppl', tmp_path / 'out', ppl=dict(text=str(text), lengths=(96, 192), chunk=32,
                                                    mc_samples=4, mc_batch=2))
  c.checkpoint = tiny_checkpoint
  result = jobs.run(c)
  for e in ('longllada', 'llada'):
    curve = result['curves'][e]
    assert curve['positions'] == [64, 96, 128, 160, 192]
    assert all(1 < p < 1000 for p in curve['perplexity'])
    assert result['perplexity'][e]['192'] == curve['perplexity'][-1]
  saved = json.loads((tmp_path / 'out' / 'ppl_results.json').read_text())
  assert saved['rope']['base'] == 10000.0 and saved['tokens'] == 192
  cells = (tmp_path / 'out' / 'ppl_cells.jsonl').read_text().splitlines()
  assert len(cells) == 1 + 10
  # A second run finds every chunk done: no model call at all.
  c.ppl.lengths = (96, 192)
  calls = []
  original = perplexity.chunk_loss
  perplexity.chunk_loss = lambda *a, **k: calls.append(1) or original(*a, **k)
  try:
    again = jobs.run(c)
  finally:
    perplexity.chunk_loss = original
  assert not calls and again['perplexity'] == result['perplexity']


def test_too_short_a_text_is_one_sentence(tmp_path):
  text = tmp_path / 'doc.txt'
  text.write_text('short')
  c = recipe('eval_ppl', tmp_path, ppl=dict(text=str(text), lengths=(256,), chunk=32))
  with pytest.raises(ConfigError, match='fewer than the longest'):
    perplexity.run(c, scorer=ConstantScorer(), tok=tokenizers.ByteTokenizer())
  c.ppl.text = ''
  with pytest.raises(ConfigError, match='config.ppl.text is empty'):
    perplexity.run(c, scorer=ConstantScorer(), tok=None)
