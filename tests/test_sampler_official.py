"""The sampler and the likelihood against LLaDA's own code (generate.py, eval_llada.py at HEAD), as
run by tests/golden/sampler_record.py on the tiny network of tests/golden/sampler_inputs.py:
token for token in float32, and in distribution for the Monte Carlo likelihood."""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from golden import record, sampler_inputs as si
from lladax import diffusion, sampler
from lladax.evals import lm_eval_adapter

@pytest.fixture(scope='module')
def golden():
  return record.load('sampler')


@pytest.fixture(scope='module')
def model():
  return si.lladax_model('float32')


def settings(kwargs, **changes) -> sampler.SamplerConfig:
  """LLaDA generate()'s keyword arguments as lladax sampler settings."""
  cfg = sampler.SamplerConfig(
      gen_length=kwargs['gen_length'], block_length=kwargs['block_length'],
      steps=kwargs['steps'], temperature=kwargs.get('temperature', 0.0),
      cfg_scale=kwargs.get('cfg_scale', 0.0), suppress_eos=kwargs.get('logits_eos_inf', False),
      defer_eos_eot=kwargs.get('confidence_eos_eot_inf', False), mask_prediction='allow')
  return cfg if not changes else dataclasses.replace(cfg, **changes)


def run(model, names, cfg, uncond='prompt_tokens'):
  tokens, mask = sampler.left_pad([si.PROMPTS[n] for n in names], si.PAD)
  return np.asarray(sampler.generate(model, tokens, jax.random.key(0), cfg, mask, uncond))


@pytest.mark.parametrize('case', list(si.GENERATE))
def test_generate_matches_llada_token_for_token(golden, model, case):
  names, kwargs = si.GENERATE[case]
  record = golden['generate'][case]
  assert record['kwargs'] == kwargs and record['prompts'] == names  # the inputs did not drift
  np.testing.assert_array_equal(run(model, names, settings(kwargs)), record['output'])


def test_the_recorded_cases_exercise_what_they_are_named_for(golden):
  gen = golden['generate']
  # The network predicted the mask: masks are left where the prompt held none ...
  assert gen['carry_over']['masks_left'] > 0 and gen['single_block']['masks_left'] > 0
  # ... and prompt masks were filled (infilling), or kept when the mask was predicted there.
  assert gen['blocks']['prompt_masks_left'] == 0 and gen['batch']['prompt_masks_left'] > 0
  # confidence_eos_eot_inf defers EOS at temperature 0 only (the chained-assignment quirk).
  assert gen['defer']['output'] != gen['defer_hot']['output']
  assert si.EOS in np.asarray(gen['defer_hot']['output'])[:, -12:]
  assert si.EOS not in np.asarray(gen['defer']['output'])[:, -12:]
  # Every selection was checked for ties torch.topk and lladax could break differently.
  assert all(r['checks']['selections'] > 0 for r in gen.values())


def test_defer_quirk_ids():
  hot = sampler.SamplerConfig(temperature=0.5, defer_eos_eot=True)
  cold = sampler.SamplerConfig(defer_eos_eot=True)
  assert sampler.deferred_ids(cold, si.EOS, si.EOT) == (si.EOS, si.EOT)
  assert sampler.deferred_ids(hot, si.EOS, si.EOT) == (si.EOT,)
  assert sampler.deferred_ids(sampler.SamplerConfig(), si.EOS, si.EOT) == ()
  assert sampler.deferred_ids(cold, si.EOS, None) == (si.EOS,)


def test_ban_mode_is_unchanged_without_prompt_masks_and_still_infills(model):
  """'ban' takes the window path when the prompt has no mask; the general path (forced with a
  nonzero infill) decodes the same tokens. A prompt's masks are candidates in 'ban' mode too; as
  in LLaDA's schedule, only gen_length tokens are revealed, so as many masks stay as the prompt
  held, none of them predicted."""
  cfg = sampler.SamplerConfig(gen_length=8, block_length=4, steps=8)
  graphdef, state = nnx.split(model)

  def generate(names, infill):
    tokens, mask = sampler.left_pad([si.PROMPTS[n] for n in names], si.PAD)
    return np.asarray(sampler._generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask),
                                        jax.random.key(0), cfg, si.MASK, (), (), infill,
                                        'prompt_tokens'))

  window = generate(['plain', 'one'], 0)
  np.testing.assert_array_equal(window, generate(['plain', 'one'], 4))
  assert not (window == si.MASK).any()
  out = generate(['infill', 'one'], 4)
  prompt = np.asarray(si.PROMPTS['infill'])
  assert (out == si.MASK).sum() == (prompt == si.MASK).sum() == 3
  assert (out[0, :len(prompt)][prompt == si.MASK] != si.MASK).any()  # some prompt mask filled
  np.testing.assert_array_equal(out[0, :len(prompt)][prompt != si.MASK], prompt[prompt != si.MASK])


def test_float16_compute_samples(model):
  """The papers' wrapper ran LLaDA in float16: the sampler decodes with float16 weights and
  compute (logits and confidences in float32); here the same tokens as in float32."""
  half = si.lladax_model('float16')
  assert half.wte.value.dtype == jnp.float16
  names, kwargs = si.GENERATE['batch']
  got, want = run(half, names, settings(kwargs)), run(model, names, settings(kwargs))
  assert got.dtype == want.dtype and got.shape == want.shape
  np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# eval_llada.py's likelihood


def test_stratified_mask_counts_match_eval_llada(golden):
  """_forward_process's counts for every k (recorded with torch.randint returning k), including
  lengths whose spread lands on .5 exactly (round half to even in both)."""
  for entry in golden['mask_counts']:
    length, batch = entry['length'], entry['batch']
    want = {int(k): v for k, v in entry['counts'].items()}
    seen = set()
    for seed in range(400):
      key = jax.random.key(seed)
      k = int(jax.random.randint(key, (), 1, length + 1))
      if k in seen:
        continue
      seen.add(k)
      assert np.asarray(diffusion.stratified_mask_counts(key, length, batch)).tolist() == want[k]
    assert seen == set(want)


@functools.partial(jax.jit, static_argnames=('prefix_length', 'cfg'))
def _cross_entropy(model, rows, seq, prefix_length, cfg):
  logits = model(rows)
  if cfg > 0:
    un_logits = model(rows.at[:, :prefix_length].set(si.MASK))
    logits = un_logits + (cfg + 1) * (logits - un_logits)
  return diffusion.token_cross_entropy(logits, jnp.broadcast_to(seq, rows.shape))


def exact_log_likelihood(model, prefix, target, cfg):
  """-E[mini-batch loss] of eval_llada.py when the counts of a mini-batch are 1..L once each:
  -(1/L) sum_l (L/l) mean over l-subsets S of the CE summed over every mask position (S and the
  prefix's own masks, whose target is the mask token), every subset enumerated."""
  L, P = len(target), len(prefix)
  seq = np.asarray(prefix + target)
  rows, lengths = [], []
  for l in range(1, L + 1):
    for s in itertools.combinations(range(L), l):
      noisy = seq.copy()
      noisy[[P + i for i in s]] = si.MASK
      rows.append(noisy)
      lengths.append(l)
  rows = np.stack(rows)
  ce = np.asarray(_cross_entropy(model, jnp.asarray(rows), jnp.asarray(seq), P, cfg), np.float64)
  per_row = np.where(rows == si.MASK, ce, 0.0).sum(1) / (np.asarray(lengths) / L)
  lengths = np.asarray(lengths)
  return -np.mean([per_row[lengths == l].mean() for l in range(1, L + 1)])


@pytest.mark.parametrize('case', list(si.LIKELIHOOD))
def test_likelihood_estimates_what_eval_llada_estimates(golden, model, case):
  """Both draw their own random masks, so they agree in distribution: the official mini-batch
  values (torch RNG) and lladax's estimate (JAX RNG) both centre on the exact expectation, which
  an estimator with another normalisation (per masked token, per mc_num, ...) or that ignores the
  mask the 'cfg' case's prefix holds misses by many standard errors."""
  record = golden['likelihood'][case]
  prefix, target, cfg, batch, draws = si.LIKELIHOOD[case]
  assert record['prefix'] == prefix and record['target'] == target
  values = np.asarray(record['minibatch_values'])
  se = values.std(ddof=1) / np.sqrt(len(values))
  exact = exact_log_likelihood(model, prefix, target, cfg)
  assert abs(values.mean() - exact) < 4.5 * se
  assert se < 0.03 * abs(exact)  # tight enough to tell a different normalisation apart
  graphdef, state = nnx.split(model)
  mc_num = 16 * batch
  ours = float(lm_eval_adapter._log_likelihood(
      graphdef, state, jnp.asarray(prefix), jnp.asarray(target), jax.random.key(1), si.MASK,
      mc_num, batch, cfg, None, True))
  assert abs(ours - exact) < 4.5 * se * np.sqrt(len(values) / 16)
