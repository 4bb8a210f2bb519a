import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import model as model_lib
from lladax import sampler
from lladax.config import ConfigError
from lladax.sampler import SamplerConfig
from tests.helpers import tiny_config

MASK, VOCAB = 63, 64


def counting_window(gen_length, block_length, calls=None, seen=None):
  """Predicts, everywhere, the number of tokens revealed so far; later window positions are
  more confident. The output then records the step at which each position was revealed."""

  def window_fn(tokens, positions, segment_ids, start):
    if calls is not None:
      jax.debug.callback(lambda: calls.append(1))
    if seen is not None:
      jax.debug.callback(lambda t, s: seen.append((np.asarray(t), np.asarray(s))), tokens,
                         segment_ids)
    revealed = gen_length - jnp.sum(tokens[:, -gen_length:] == MASK, axis=1)
    onehot = jax.nn.one_hot(revealed, VOCAB)[:, None, :]
    return onehot * (10.0 + jnp.arange(block_length))[None, :, None]

  return window_fn


def test_transfer_schedule_matches_llada():
  np.testing.assert_array_equal(sampler.transfer_schedule(32, 32), np.ones(32))
  np.testing.assert_array_equal(sampler.transfer_schedule(10, 4), [3, 3, 2, 2])
  np.testing.assert_array_equal(sampler.transfer_schedule(8, 3), [3, 3, 2])


def test_blocks_decode_in_order_by_confidence_with_exactly_steps_passes():
  cfg = SamplerConfig(gen_length=12, block_length=4, steps=6)
  calls = []
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
  out = sampler.sample(counting_window(12, 4, calls), prompt, jax.random.key(0), cfg,
                       mask_id=MASK)
  out = np.asarray(out)
  assert len(calls) == 6
  np.testing.assert_array_equal(out[:, :3], prompt)
  assert not (out == MASK).any()
  # Two tokens per step; within a block the most confident (last) positions go first.
  want = [2, 2, 0, 0, 6, 6, 4, 4, 10, 10, 8, 8]
  np.testing.assert_array_equal(out[0, 3:], want)
  np.testing.assert_array_equal(out[1, 3:], want)


def test_random_remasking_reveals_the_schedule_and_leaves_no_mask():
  cfg = SamplerConfig(gen_length=8, block_length=8, steps=3, remasking='random')
  out = np.asarray(sampler.sample(counting_window(8, 8), jnp.array([[1, 2]]), jax.random.key(3),
                                  cfg, mask_id=MASK))
  assert not (out == MASK).any()
  values, counts = np.unique(out[0, 2:], return_counts=True)
  np.testing.assert_array_equal(values, [0, 3, 6])
  np.testing.assert_array_equal(counts, [3, 3, 2])


def test_left_padding_is_never_attended_and_cfg_masks_the_prompt():
  tokens, mask = sampler.left_pad([[7, 8, 9], [5]], pad_id=60)
  np.testing.assert_array_equal(tokens, [[7, 8, 9], [60, 60, 5]])
  seen = []
  cfg = SamplerConfig(gen_length=4, block_length=4, steps=1, cfg_scale=1.0)
  sampler.sample(counting_window(4, 4, seen=seen), jnp.asarray(tokens), jax.random.key(0), cfg,
                 mask_id=MASK, prompt_mask=jnp.asarray(mask))
  (x, seg), = seen
  assert x.shape[0] == 4  # conditional and unconditional rows in one pass
  np.testing.assert_array_equal(seg[1], [0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(x[2, :3], [MASK] * 3)  # unconditional copy: prompt masked
  np.testing.assert_array_equal(x[3, :3], [60, 60, MASK])  # padding stays padding


def test_suppressed_tokens_and_the_mask_token_are_never_generated():
  def favours(token):
    return lambda tokens, pos, seg, start: jnp.broadcast_to(
        jax.nn.one_hot(token, VOCAB) * 5.0, (tokens.shape[0], 4, VOCAB))

  cfg = SamplerConfig(gen_length=4, block_length=4, steps=4)
  out = sampler.sample(favours(MASK), jnp.array([[1]]), jax.random.key(0), cfg, mask_id=MASK)
  assert not bool(jnp.any(out == MASK))
  out = sampler.sample(favours(9), jnp.array([[1]]), jax.random.key(0), cfg, mask_id=MASK,
                       suppress_ids=(9,))
  assert not bool(jnp.any(out == 9))


def test_generate_is_deterministic_for_a_seed_and_greedy_ignores_the_seed():
  m = model_lib.init(tiny_config(), seed=0)
  prompt = jnp.array([[1, 2, 3, 4]])
  hot = SamplerConfig(gen_length=8, block_length=4, steps=4, temperature=1.0)
  a = sampler.generate(m, prompt, jax.random.key(1), hot)
  b = sampler.generate(m, prompt, jax.random.key(1), hot)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  others = [sampler.generate(m, prompt, jax.random.key(s), hot) for s in (2, 3, 4)]
  assert any(not np.array_equal(np.asarray(a), np.asarray(o)) for o in others)
  cold = SamplerConfig(gen_length=8, block_length=4, steps=4)
  np.testing.assert_array_equal(np.asarray(sampler.generate(m, prompt, jax.random.key(1), cold)),
                                np.asarray(sampler.generate(m, prompt, jax.random.key(9), cold)))


def test_generate_window_logits_equal_full_logits():
  m = model_lib.init(tiny_config(), seed=0)
  tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
  pos = jnp.arange(8)[None]
  seg = jnp.ones((1, 8), jnp.int32)
  window = sampler.model_window_fn(m, 4)(tokens, pos, seg, 3)
  np.testing.assert_allclose(np.asarray(window), np.asarray(m(tokens)[:, 3:7]), atol=1e-5)


def test_gumbel_max_samples_the_softmax():
  logits = jnp.array([0.0, 1.0, 2.0, -1.0])
  g = sampler.gumbel(jax.random.key(0), (40000, 4))
  freq = np.bincount(np.asarray(jnp.argmax(logits + g, -1)), minlength=4) / 40000
  np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits)), atol=0.01)
  assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize('kw,match', [
    (dict(gen_length=10, block_length=4), 'multiple of block_length'),
    (dict(gen_length=8, block_length=4, steps=3), 'number of blocks'),
    (dict(gen_length=8, block_length=4, steps=16), 'exceeds gen_length'),
    (dict(remasking='entropy'), 'remasking'),
])
def test_sampler_config_errors(kw, match):
  with pytest.raises(ConfigError, match=match):
    SamplerConfig(**kw)


class HeadCounter:
  """A Network whose prediction at a position is `position % 50`, more confident the earlier the
  position; it records how many positions each executed LM head call covers."""

  def __init__(self):
    self.sizes = []

  def hidden(self, tokens, positions, segment_ids):
    del segment_ids
    return jnp.stack([tokens, positions], -1).astype(jnp.float32)

  def logits(self, hidden):
    n = hidden.shape[1]
    jax.debug.callback(lambda: self.sizes.append(n))
    pos = hidden[..., 1].astype(jnp.int32)
    return jax.nn.one_hot(pos % 50, VOCAB) * (40.0 - hidden[..., 1:2])


def test_allow_mode_runs_the_lm_head_only_on_blocks_with_candidates():
  """Generated blocks are projected one at a time and only while they hold a mask before the
  current block's end: here exactly the current block, as in the window path."""
  net = HeadCounter()
  cfg = SamplerConfig(gen_length=8, block_length=4, steps=4, mask_prediction='allow')
  out = np.asarray(sampler.sample(net, jnp.array([[1, 2, 3]]), jax.random.key(0), cfg,
                                  mask_id=MASK))
  np.testing.assert_array_equal(out[0, 3:], np.arange(3, 11) % 50)
  assert net.sizes == [4, 4, 4, 4]


def test_prompt_masks_are_filled_padding_never_and_the_head_skips_filled_parts():
  net = HeadCounter()
  cfg = SamplerConfig(gen_length=8, block_length=4, steps=4)  # 'ban', two per step
  # Left padding holds the mask id (prompt_mask False there): never a candidate.
  prompt = jnp.array([[MASK, MASK, 7, MASK, 9]])
  real = jnp.array([[False, False, True, True, True]])
  out = np.asarray(sampler.sample(net, prompt, jax.random.key(0), cfg, mask_id=MASK,
                                  prompt_mask=real, infill=2))
  np.testing.assert_array_equal(out[0], [MASK, MASK, 7, 3, 9, 5, 6, 7, 8, 9, 10, 11, MASK])
  # Step 1 projects the prompt part (infill=2 slots) and block 0; its most confident candidate is
  # the prompt mask, so later steps project only the blocks that still hold a candidate: block 0
  # (steps 1-3), block 1 (steps 3-4). The last position is left: the schedule reveals
  # gen_length tokens and one of them went to the prompt.
  assert sorted(net.sizes) == [2, 4, 4, 4, 4, 4]


def test_the_general_path_needs_a_network():
  cfg = SamplerConfig(gen_length=4, block_length=4, steps=4, mask_prediction='allow')
  with pytest.raises(ValueError, match='hidden'):
    sampler.sample(counting_window(4, 4), jnp.array([[1]]), jax.random.key(0), cfg, mask_id=MASK)
