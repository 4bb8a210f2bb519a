"""The train job's promises: a stopped run resumes with exactly the losses of an uninterrupted
one (generated data and the Grain pipeline), non-finite losses stop or skip, validation runs."""
import json

import numpy as np
import pytest

from lladax import presets
from lladax.train import job as train


def recipe(workdir, steps, **data):
  c = presets.base('train')
  c.workdir = str(workdir)
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(d_model=32, n_layers=2, mlp_hidden_size=64)
  c.data.update(**{'source': 'retrieval', 'needle': 'key', 'n_pairs': 2, 'seq_len': 32,
                   'batch_size': 4, **data})
  c.train.update(steps=steps, log_every=1, checkpoint_every=2, objective='sft')
  c.optim.update(learning_rate=1e-3, warmup_steps=2, schedule='cosine', decay_steps=8)
  return c


def losses(result):
  return {h['step']: h['loss'] for h in result['history']}


def test_stop_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
  full = losses(train.run(recipe(tmp_path / 'full', 6)))
  first = losses(train.run(recipe(tmp_path / 'split', 3)))
  second = losses(train.run(recipe(tmp_path / 'split', 6)))
  assert sorted(first) == [1, 2, 3] and sorted(second) == [4, 5, 6]
  for step in range(1, 7):
    assert (first | second)[step] == full[step], step
  lines = (tmp_path / 'split' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [1, 2, 3, 4, 5, 6]


def test_synchronous_checkpoints_give_the_same_losses(tmp_path, monkeypatch):
  from lladax.train import \
      checkpoints as train_checkpoint  # pylint: disable=import-outside-toplevel
  made = []
  opened = train_checkpoint.TrainCheckpoints.__init__
  monkeypatch.setattr(train_checkpoint.TrainCheckpoints, '__init__',
                      lambda self, d, cfg, meta: made.append(cfg) or opened(self, d, cfg, meta))
  c = recipe(tmp_path / 'sync', 3)
  c.train.async_checkpoints = False
  first = losses(train.run(c))
  again = losses(train.run(recipe(tmp_path / 'async', 3)))
  assert [cfg.async_save for cfg in made] == [False, True] and first == again


def test_a_preempted_run_says_so_saves_no_model_and_resumes(tmp_path, monkeypatch):
  from lladax.train import \
      checkpoints as train_checkpoint  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(train_checkpoint.Preemption, 'reached', lambda self, step: step == 2)
  stopped = train.run(recipe(tmp_path, 4))
  assert stopped['stopped_early'] and stopped['model_dir'] is None
  assert sorted(losses(stopped)) == [1, 2]
  monkeypatch.undo()
  rest = train.run(recipe(tmp_path, 4))
  assert not rest['stopped_early'] and rest['model_dir']
  assert sorted(losses(rest)) == [3, 4]


def test_resume_on_the_grain_pipeline_continues_the_data(tmp_path):
  corpus = tmp_path / 'docs.jsonl'
  rng = np.random.default_rng(0)
  corpus.write_text(''.join(json.dumps({'text': ' '.join(rng.choice(['ab', 'cd', 'ef'], 30))})
                            + '\n' for _ in range(40)))

  def pipe(workdir, steps):
    c = recipe(workdir, steps, source='pipeline', seq_len=64)
    c.train.objective = 'pretrain'
    c.pipeline = presets.section(presets.pipeline_config(), sources=(f'jsonl:{corpus}',),
                                 seq_len=64, read_threads=1)
    return c

  full = losses(train.run(pipe(tmp_path / 'full', 5)))
  train.run(pipe(tmp_path / 'split', 3))
  second = losses(train.run(pipe(tmp_path / 'split', 5)))
  assert second == {4: full[4], 5: full[5]}


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
  c = recipe(tmp_path, 6)
  c.optim.update(learning_rate=1e30, warmup_steps=0, schedule='constant', clip_norm=0.0)
  with pytest.raises(FloatingPointError, match=r'at step \d'):
    train.run(c)


def test_skipping_non_finite_steps_keeps_the_last_finite_parameters(tmp_path):
  c = recipe(tmp_path, 6)
  c.optim.update(learning_rate=1e30, warmup_steps=0, schedule='constant', clip_norm=0.0)
  c.train.on_nan = 'skip'
  result = train.run(c)
  skipped = [h['skipped'] for h in result['history']]
  assert skipped[0] == 0 and sum(skipped) >= 1
  params = result['model'].blocks.q_proj[...]
  assert np.isfinite(np.asarray(params)).all()


def test_validation_loss_is_logged(tmp_path):
  c = recipe(tmp_path, 4)
  c.train.update(eval_every=2, eval_batches=2)
  result = train.run(c)
  evals = [h for h in result['history'] if 'eval_loss' in h]
  assert [h['step'] for h in evals] == [2, 4]
  assert all(np.isfinite(h['eval_loss']) and h['eval_loss'] > 0 for h in evals)
