import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import diffusion


def test_forward_mask_respects_padding_prompt_and_rate():
  b, t = 64, 200
  tokens = jnp.arange(b * t).reshape(b, t) % 50
  maskable = jnp.ones((b, t), bool).at[:, :20].set(False).at[:, -30:].set(False)
  noisy, masked, p = diffusion.forward_mask(jax.random.key(0), tokens, 99, maskable)
  assert not bool(jnp.any(masked & ~maskable))
  np.testing.assert_array_equal(np.asarray(noisy == 99), np.asarray(masked))
  np.testing.assert_array_equal(np.asarray(jnp.where(masked, tokens, noisy)), np.asarray(tokens))
  assert bool(jnp.all((p >= diffusion.EPS) & (p <= 1.0)))
  # Each row's masked fraction tracks its own p (150 maskable tokens per row).
  frac = jnp.sum(masked, 1) / 150
  assert float(jnp.mean(jnp.abs(frac - p))) < 0.05
  assert float(jnp.std(p)) > 0.2  # t varies per sequence, not per batch


def test_loss_is_weighted_by_inverse_p_and_normalised_by_real_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
  targets = np.array([[1, 2, 3, 4], [0, 1, 2, 3]])
  masked = np.array([[True, False, True, False], [False, True, False, False]])
  real = np.array([[True, True, True, True], [True, True, True, False]])
  p = np.array([0.5, 0.25], np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  want = (ce[0, 0] / 0.5 + ce[0, 2] / 0.5 + ce[1, 1] / 0.25) / 7
  value, metrics = diffusion.loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(masked),
                                  jnp.asarray(p), jnp.asarray(real))
  assert float(value) == pytest.approx(want, rel=1e-5)
  assert int(metrics['masked_tokens']) == 3 and int(metrics['real_tokens']) == 7
  acc = np.mean([np.argmax(logits[i, j]) == targets[i, j] for i, j in [(0, 0), (0, 2), (1, 1)]])
  assert float(metrics['masked_accuracy']) == pytest.approx(acc)


def test_sft_loss_normalises_each_row_by_its_answer_length():
  logits = jnp.zeros((2, 4, 8))  # uniform: CE = log 8 everywhere
  targets = jnp.zeros((2, 4), jnp.int32)
  answer = jnp.array([[False, True, True, True], [False, False, False, True]])
  masked = jnp.array([[False, True, False, False], [False, False, False, True]])
  p = jnp.array([0.5, 1.0])
  value, _ = diffusion.loss(logits, targets, masked, p, jnp.ones((2, 4), bool), answer)
  want = ((np.log(8) / 0.5) / 3 + (np.log(8) / 1.0) / 1) / 2
  assert float(value) == pytest.approx(want, rel=1e-6)


def test_stratified_counts_match_llada():
  # get_log_likelihood.py: k ~ U{1..L}; round(linspace(k, k + (b-1) L / b, b)), wrapped into [1, L].
  for seed in range(20):
    key = jax.random.key(seed)
    got = np.asarray(diffusion.stratified_mask_counts(key, 10, 4))
    k = int(jax.random.randint(key, (), 1, 11))
    want = np.round(np.linspace(k, k + 3 * 10 / 4, 4)).astype(int)
    np.testing.assert_array_equal(got, (want - 1) % 10 + 1)
    assert got.min() >= 1 and got.max() <= 10


def test_likelihood_of_a_perfect_and_a_uniform_predictor():
  prompt = jnp.array([3, 4, 5])
  answer = jnp.array([1, 2, 0, 1])
  vocab = 8

  def uniform(tokens):
    return jnp.zeros(tokens.shape + (vocab,))

  # Uniform logits: every masked token costs log V, weighted by L / l_i, summed over l_i tokens:
  # exactly L log V per row, so the estimate is -L log V whatever the masks.
  ll = diffusion.log_likelihood(uniform, prompt, answer, jax.random.key(0), mask_id=7, mc_num=8,
                                batch_size=4)
  assert float(ll) == pytest.approx(-4 * np.log(vocab), rel=1e-5)

  truth = jnp.concatenate([prompt, answer])

  def oracle(tokens):
    return 30.0 * jax.nn.one_hot(jnp.broadcast_to(truth, tokens.shape), vocab)

  ll = diffusion.log_likelihood(oracle, prompt, answer, jax.random.key(0), mask_id=7, mc_num=8,
                                batch_size=4)
  assert -1e-6 < float(ll) <= 0


def test_likelihood_never_masks_the_prompt_and_applies_cfg():
  prompt = jnp.array([3, 4])
  answer = jnp.array([1, 2, 1])
  seen = []

  def spy(tokens):
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens)
    # Conditional rows (prompt visible) favour the truth; unconditional rows are uniform.
    has_prompt = (tokens[:, :1] == 3)[..., None]
    truth = jax.nn.one_hot(jnp.array([3, 4, 1, 2, 1]), 6)
    return jnp.where(has_prompt, truth, 0.0)

  ll0 = diffusion.log_likelihood(spy, prompt, answer, jax.random.key(1), mask_id=5, mc_num=4,
                                 batch_size=2)
  assert len(seen) == 2 and all((s[:, :2] == np.asarray(prompt)).all() for s in seen)
  seen.clear()
  ll2 = diffusion.log_likelihood(spy, prompt, answer, jax.random.key(1), mask_id=5, mc_num=4,
                                 batch_size=2, cfg_scale=2.0)
  both = seen[0]
  assert both.shape[0] == 4 and (both[2:, :2] == 5).all() and (both[:2, :2] == [3, 4]).all()
  assert float(ll2) > float(ll0)  # guidance sharpens towards the conditional prediction


def test_likelihood_rejects_uneven_batches():
  with pytest.raises(ValueError, match='multiple'):
    diffusion.log_likelihood(lambda t: t, jnp.array([1]), jnp.array([2]), jax.random.key(0),
                             mask_id=0, mc_num=10, batch_size=4)


def test_likelihood_can_score_mask_tokens_the_text_holds_as_llada_does():
  """LLaDA's code scores every position holding the mask after noising (perturbed == mask_id), so
  a mask token already in the prompt is scored too (target: the mask), weighted by 1/p. With
  uniform logits, A = 4 and mini-batches of 4 (counts 1..4 once each) that adds
  sum_l (A / l) log V / 4 = 25/12 log V to the exact A log V."""
  vocab, mask = 8, 7
  prompt = jnp.array([3, mask, 5])
  answer = jnp.array([1, 2, 0, 1])

  def uniform(tokens):
    return jnp.zeros(tokens.shape + (vocab,))

  kwargs = dict(mask_id=mask, mc_num=8, batch_size=4)
  plain = diffusion.log_likelihood(uniform, prompt, answer, jax.random.key(0), **kwargs)
  assert float(plain) == pytest.approx(-4 * np.log(vocab), rel=1e-5)
  scored = diffusion.log_likelihood(uniform, prompt, answer, jax.random.key(0),
                                    score_all_masks=True, **kwargs)
  assert float(scored) == pytest.approx(-(4 + 25 / 12) * np.log(vocab), rel=1e-5)
