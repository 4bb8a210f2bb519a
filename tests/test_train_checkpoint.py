import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.config import ConfigError
from lladax.train import checkpoints as train_checkpoint
from lladax.train.checkpoints import CheckpointConfig, Preemption, TrainCheckpoints
from lladax.train.metrics import MetricsWriter

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
  # Moved aside, not deleted, so that the run can write step 2 again.
  assert sorted(os.listdir(tmp_path)) == ['1', '2.corrupt']
  ckpt.save(2, state(2), {'position': 2})
  ckpt.close()


def flip_array_bytes(step_dir):
  files = [os.path.join(r, f) for r, _, names in os.walk(step_dir / 'state') for f in names
           if os.sep + 'd' + os.sep in os.path.join(r, f)]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x01   # one bit
  with open(path, 'wb') as f:
    f.write(data)


def test_flipped_bytes_fail_the_checksums_and_the_previous_step_is_used(tmp_path, caplog):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(keep=3), META)
  ckpt.save(1, {'w': jnp.arange(4000, dtype=jnp.float32)}, {'position': 1})
  ckpt.save(2, {'w': jnp.arange(4000, dtype=jnp.float32) + 1}, {'position': 2})
  ckpt.close()
  flip_array_bytes(tmp_path / '2')
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(keep=3), META)
  step, got, _ = ckpt.restore_latest({'w': jax.ShapeDtypeStruct((4000,), jnp.float32)})
  ckpt.close()
  assert step == 1 and float(got['w'][1]) == 1.0
  assert f'{tmp_path}/2/state does not match the checksums' in caplog.text
  assert "first ['w']" in caplog.text and '2.corrupt' in caplog.text


def reopened_with(tmp_path, w):
  """A run's checkpoints holding step 3, reopened by a run whose params['w'] is `w`, and that
  run's target."""
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(), META)
  ckpt.save(3, state(3), None)
  ckpt.close()
  target = abstract()
  target['params']['w'] = w
  return TrainCheckpoints(str(tmp_path), CheckpointConfig(), META), target


def test_a_resume_in_another_param_dtype_is_verified_as_stored_then_cast(tmp_path):
  ckpt, target = reopened_with(tmp_path, jax.ShapeDtypeStruct((4, 3), jnp.bfloat16))
  step, got, _ = ckpt.restore_latest(target)
  ckpt.close()
  assert step == 3 and got['params']['w'].dtype == jnp.bfloat16
  assert os.listdir(tmp_path) == ['3']


def test_a_checkpoint_with_other_arrays_is_refused_not_moved_aside(tmp_path):
  ckpt, target = reopened_with(tmp_path, jax.ShapeDtypeStruct((4, 5), jnp.float32))
  with pytest.raises(ConfigError, match=r"holds other arrays than this run \(\['params'\]\['w'\]"):
    ckpt.restore_latest(target)
  ckpt.close()
  assert os.listdir(tmp_path) == ['3']


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
  ckpt = TrainCheckpoints(str(tmp_path), CheckpointConfig(), META)
  ckpt.save(5, state(5), None)
  ckpt.close()
  other = TrainCheckpoints(str(tmp_path), CheckpointConfig(), {**META, 'model': {'d_model': 16}})
  with pytest.raises(ConfigError, match=r'holds a run with other settings \(model; model was'):
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


def test_sigterm_while_waiting_stops_at_once_and_during_a_step_only_flags():
  watch = Preemption()
  try:
    os.kill(os.getpid(), signal.SIGTERM)     # during a step: noticed, nothing interrupted
    assert watch.reached(1)
    with pytest.raises(train_checkpoint.Preempted):   # came before the wait: it does not begin
      with watch.waiting():
        pass
  finally:
    watch.close()
  watch = Preemption()
  try:
    with pytest.raises(train_checkpoint.Preempted):
      with watch.waiting():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**8):               # a wait that would not end by itself
          pass
  finally:
    watch.close()


def test_a_resumed_run_drops_the_metrics_written_after_its_step(tmp_path):
  lines = ''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in range(1, 6))
  (tmp_path / 'metrics.jsonl').write_text(lines + '{"step": 6, "lo')   # torn by a kill
  writer = MetricsWriter(str(tmp_path), tensorboard=False, start_step=3)
  writer.write(4, {'loss': 2.0})
  writer.close()
  steps = [json.loads(l)['step'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3, 4]


def test_metrics_go_to_json_lines_and_tensorboard(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {'loss': 2.5, 'lr': 1e-3})
  writer.write(2, {'loss': float('nan')})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[0] == {'step': 1, 'loss': 2.5, 'lr': 1e-3} and lines[1]['step'] == 2
  events = os.listdir(tmp_path / 'tensorboard')
  assert any(e.startswith('events.out.tfevents') for e in events)
