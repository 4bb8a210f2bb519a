"""The cached sampler (lladax/sampler_cache.py): exact when its cache is refreshed every step,
approximate otherwise, its settings checked in one sentence and carried from recipes and eval
jobs (where it is a recorded deviation)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import model as model_lib, sampler, sampler_cache
from lladax.config import ConfigError, parse
from lladax.evals import eval_settings, niah, protocols
from lladax.sampler import SamplerConfig
from tests.helpers import tiny_config
from tests.test_eval_common import recipe

MASK = 66


def model(kernel='reference', **options):
  cfg = tiny_config(vocab_size=67, max_sequence_length=64, attention_kernel=kernel,
                    attention_options=tuple(f'{k}={v}' for k, v in options.items()))
  return model_lib.init(cfg, seed=3)


def prompts():
  """Two left-padded prompts of random tokens (no mask token)."""
  rng = np.random.default_rng(0)
  tokens, mask = sampler.left_pad([list(rng.integers(0, 60, 21)), list(rng.integers(0, 60, 14))],
                                  pad_id=65)
  return jnp.asarray(tokens), jnp.asarray(mask)


def run(net, cfg, key=0):
  tokens, mask = prompts()
  return np.asarray(sampler.generate(net, tokens, jax.random.key(key), cfg, mask))


@pytest.mark.parametrize('kernel, options, cache, settings', [
    ('reference', {}, 'prompt', dict(mask_prediction='ban')),
    ('reference', {}, 'prompt', dict(mask_prediction='allow', temperature=0.7,
                                     cache_recompute=5)),
    ('reference', {}, 'dual', dict(cfg_scale=1.5, remasking='random', temperature=0.5)),
    ('blockwise', dict(block_q=4, block_kv=8), 'prompt', dict(suppress_eos=True)),
    ('blockwise', dict(block_q=4, block_kv=8), 'dual', dict(defer_eos_eot=True,
                                                            cache_recompute=3)),
])
def test_a_cache_refreshed_every_step_decodes_as_the_uncached_sampler(kernel, options, cache,
                                                                      settings):
  net = model(kernel, **options)
  settings = dict(settings)
  recompute = settings.pop('cache_recompute', 0)
  cfg = SamplerConfig(gen_length=12, block_length=4, steps=6, **settings)
  exact = run(net, cfg)
  cached = run(net, dataclasses.replace(cfg, cache=cache, cache_refresh='step',
                                        cache_recompute=recompute))
  np.testing.assert_array_equal(cached, exact)
  assert not (exact[:, -12:] == MASK).all()


def test_the_window_attends_to_the_cache_as_the_full_pass_does():
  net = model('blockwise', block_q=4, block_kv=8)
  tokens, mask = prompts()
  seg = mask.astype(jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  full = net.hidden(tokens, pos, seg)

  @jax.jit
  def window(tokens_for_cache):
    cache = sampler_cache.forward(net, tokens_for_cache, pos, seg,
                                  sampler_cache.empty_cache(net, 2, 21), 0, seg, True)[1]
    return sampler_cache.forward(net, tokens[:, 9:17], pos[:, 9:17], seg[:, 9:17], cache, 9,
                                 seg, False)[0]

  np.testing.assert_allclose(window(tokens), full[:, 9:17], atol=2e-5)
  # A stale cache (other tokens outside the window) changes the window's hidden states.
  assert np.abs(np.asarray(window((tokens + 1) % 60) - full[:, 9:17])).max() > 1e-3


@pytest.mark.parametrize('cache, refresh, recompute', [
    ('prompt', 'generation', 0), ('prompt', 'block', 30), ('dual', 'block', 4)])
def test_the_cached_sampler_decodes_every_position(cache, refresh, recompute):
  cfg = SamplerConfig(gen_length=12, block_length=4, steps=6, cache=cache, cache_refresh=refresh,
                      cache_recompute=recompute)
  out = run(model(), cfg)
  assert not (out[:, -12:] == MASK).any()


@pytest.mark.parametrize('settings, words', [
    (dict(cache='full'), "config.sample.cache='full' is not one of 'none', 'prompt', 'dual'."),
    (dict(cache='prompt', cache_refresh='often'), 'config.sample.cache_refresh='),
    (dict(cache='dual', cache_refresh='generation'), "use cache_refresh='block'"),
    (dict(cache='prompt', cache_recompute=-1), 'cache_recompute=-1 is negative'),
    (dict(cache_recompute=8), 'applies only with a cache'),
])
def test_a_bad_cache_setting_is_one_sentence(settings, words):
  with pytest.raises(ConfigError) as e:
    SamplerConfig(**settings)
  assert words in str(e.value) and str(e.value).count('. ') == 0


def test_a_prompt_with_masks_or_a_window_function_is_refused_with_the_cache():
  cfg = SamplerConfig(gen_length=4, block_length=4, steps=2, cache='prompt')
  with pytest.raises(ConfigError, match='infilling'):
    sampler.generate(model(), jnp.array([[1, MASK, 3]]), jax.random.key(0), cfg)
  with pytest.raises(ValueError, match='needs a LLaDA module'):
    sampler.sample(lambda *a: None, jnp.array([[1, 2]]), jax.random.key(0), cfg, mask_id=MASK)


def test_the_recipe_sets_the_cache_and_eval_jobs_record_it(tmp_path):
  c = recipe('eval_niah', tmp_path, niah=dict(protocol='lladax', grid='custom', lengths=(300,),
                                              depths=(50.0,), repeats=1, length_buffer=100))
  c.eval.oracle = True
  assert not protocols.cache_deviations(parse(c).sample)
  c.sample.cache, c.sample.cache_refresh = 'prompt', 'generation'
  scfg = eval_settings.sampler_settings(parse(c).sample, protocols.GENERATION['ultrallada'],
                                        gen_length=32, block_length=32, steps=16)
  assert (scfg.cache, scfg.cache_refresh) == ('prompt', 'generation')
  result = niah.run(c)
  assert result['sampler']['cache'] == 'prompt'
  # Without a cache the results files record the sampler as before, so older runs resume.
  assert 'cache' not in sampler.settings(SamplerConfig())
  assert any(d.startswith("config.sample.cache='prompt'") for d in result['deviations'])
