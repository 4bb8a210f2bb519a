import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.config import ConfigError
from lladax.metrics import MetricsWriter
from lladax.train_checkpoint import CheckpointConfig, Preemption, TrainCheckpoints

META = {'model': {'d_model': 8}, 'data': 'retrieval'}


def state(step):
  return {'params': {'w': jnp.full((4, 3), float(step))}, 'step': jnp.asarray(step),
          'rng': jax.random.key_data(jax.random.key(step))}


def abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0))


def test_round_trip_keeps_the_last_k_and_the_data_state(tmp_path):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(every=1, keep=2), META)
  for step in (1, 2, 3):
    ckpt.save(step, state(step), {'position': step * 10})
  ckpt.wait()
  assert ckpt.manager.all_steps() == [2, 3]
  step, got, data = ckpt.restore_latest(abstract())
  assert step == 3 and data == {'position': 30}
  np.testing.assert_array_equal(got['params']['w'], np.full((4, 3), 3.0))
  ckpt.close()


def test_a_fresh_directory_restores_nothing(tmp_path):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(), META)
  assert ckpt.restore_latest(abstract()) is None
  ckpt.close()


def test_an_unreadable_latest_step_falls_back_to_the_previous(tmp_path):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(keep=3), META)
  ckpt.save(1, state(1), {'position': 1})
  ckpt.save(2, state(2), {'position': 2})
  ckpt.close()
  # Damage every array file of step 2 (e.g. a disk or bucket that lost objects).
  for root, _, files in os.walk(tmp_path / '2' / 'state'):
    for name in files:
      if name not in ('_METADATA', '_CHECKPOINT_METADATA', '_sharding'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'\0corrupt')
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(keep=3), META)
  step, got, data = ckpt.restore_latest(abstract())
  assert step == 1 and data == {'position': 1}
  np.testing.assert_array_equal(got['params']['w'], np.ones((4, 3)))
  ckpt.close()


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(), META)
  ckpt.save(5, state(5), None)
  ckpt.close()
  other = TrainCheckpoints(str(tmp_path), CheckpointConfig(), {**META, 'model': {'d_model': 16}})
  with pytest.raises(ConfigError, match='written with model='):
    other.restore_latest(abstract())
  other.close()


def test_sigterm_is_noticed_and_the_handler_restored():
  before = signal.getsignal(signal.SIGTERM)
  watch = Preemption()
  assert not watch.reached(0)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watch.reached(1)
  watch.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_metrics_go_to_json_lines_and_tensorboard(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {'loss': 2.5, 'lr': 1e-3})
  writer.write(2, {'loss': float('nan')})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[0] == {'step': 1, 'loss': 2.5, 'lr': 1e-3} and lines[1]['step'] == 2
  events = os.listdir(tmp_path / 'tensorboard')
  assert any(e.startswith('events.out.tfevents') for e in events)
