import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import presets, saved_model
from lladax.config import ConfigError
from lladax.train import job as train


def tiny_recipe(tmp_path, **train_kw):
  c = presets.base('train')
  c.workdir = str(tmp_path)
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(d_model=64, n_layers=2, mlp_hidden_size=128)
  c.data.update(source='text_files', path='{stdlib}/json/*.py', seq_len=64, batch_size=8)
  c.train.update(**{'steps': 40, 'log_every': 10, **train_kw})
  c.optim.update(learning_rate=3e-3, warmup_steps=5)
  return c


def test_loss_falls_and_the_saved_model_reloads_with_equal_logits(tmp_path):
  result = train.run(tiny_recipe(tmp_path))
  losses = [h['loss'] for h in result['history']]
  assert losses[-1] < 0.75 * losses[0], losses
  assert all(np.isfinite(h['grad_norm']) for h in result['history'])
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 4
  loaded, meta = saved_model.load_model(result['model_dir'])
  assert meta['tokenizer']['kind'] == 'bytes'
  tokens = jnp.array([[10, 20, 30, 40, 50]])
  np.testing.assert_array_equal(np.asarray(loaded(tokens)), np.asarray(result['model'](tokens)))


def test_post_training_starts_from_the_checkpoint_with_the_rope_rule(tmp_path):
  first = train.run(tiny_recipe(tmp_path / 'a', ))
  c = tiny_recipe(tmp_path / 'b')
  c.checkpoint = first['model_dir']
  c.train.steps = 1
  c.optim.learning_rate = 1e-9
  c.rope.update(rule='diffusion_ntk', target_length=256)
  second = train.run(c)
  assert second['model'].cfg.rope_theta > first['model'].cfg.rope_theta
  a = jax.tree.leaves(first['model'].blocks.q_proj[...])
  b = jax.tree.leaves(second['model'].blocks.q_proj[...])
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)


def test_checkpoint_shape_mismatch_is_refused(tmp_path):
  first = train.run(tiny_recipe(tmp_path / 'a', steps=1))
  c = tiny_recipe(tmp_path / 'b')
  c.checkpoint = first['model_dir']
  c.model.d_model = 32
  with pytest.raises(ConfigError, match='d_model'):
    train.run(c)


def test_a_model_too_big_for_one_device_is_refused_before_allocation(tmp_path):
  c = tiny_recipe(tmp_path)
  c.model = presets.base('train').model  # LLaDA-8B
  with pytest.raises(ConfigError, match='GiB'):
    train.run(c)


def test_sft_objective_never_masks_the_prompt(tmp_path):
  c = tiny_recipe(tmp_path, objective='sft')
  c.data.update(source='retrieval', seq_len=40, n_pairs=3, max_questions=2)
  c.train.steps = 3
  c.workdir = ''
  result = train.run(c)
  assert result['model_dir'] is None and len(result['history']) == 1


def test_data_errors_fail_at_start_up(tmp_path):
  c = tiny_recipe(tmp_path)
  c.data.path = str(tmp_path / 'nothing' / '*.txt')
  with pytest.raises(ConfigError, match='matches no file'):
    train.run(c)
  c = tiny_recipe(tmp_path)
  c.data.update(source='retrieval', seq_len=10)
  with pytest.raises(ConfigError, match='seq_len'):
    train.run(c)
  c = tiny_recipe(tmp_path)
  c.model.vocab_size = 200
  with pytest.raises(ConfigError, match='vocab_size'):
    train.run(c)
