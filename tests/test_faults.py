"""Fault injection on the train job: kill -9 during a checkpoint write and during the final model
save, a corrupt newest checkpoint (truncated, flipped bytes, deleted metadata, emptied data
state), SIGTERM while waiting and while stepping, data that runs out, too few steps. Every rerun
must resume and reproduce the uninterrupted losses and model.

Run as a script (`python tests/test_faults.py WORKDIR STEPS FAULT`), this file is the child
process the kill tests train in.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__':
  sys.path.insert(0, ROOT)

from test_train_resume import losses, recipe  # noqa: E402

from lladax import saved_model  # noqa: E402
from lladax.config import ConfigError  # noqa: E402
from lladax.train import (batches as train_data, checkpoints as train_checkpoint,  # noqa: E402
                          job as train, state as train_state)

STEPS = 6
CACHE_SETTINGS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
                  'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture(scope='module', autouse=True)
def compile_cache(tmp_path_factory):
  """The runs here compile the same steps again and again: a persistent compilation cache for
  this module and its child processes makes a rerun ~1 s instead of ~6."""
  before = {name: getattr(jax.config, name) for name in CACHE_SETTINGS}
  directory = str(tmp_path_factory.mktemp('compile_cache'))
  for name, value in zip(CACHE_SETTINGS, (directory, 0, 0)):
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield dict(zip((n.upper() for n in CACHE_SETTINGS), (directory, '0', '0')))
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def child_env(cache: dict) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **cache)


def faulty(workdir, steps, **train_kw):
  c = recipe(workdir, steps)
  c.train.update(tensorboard=False, **train_kw)
  return c


def params_of(model):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return {'.'.join(map(str, k)): np.asarray(v) for k, v in
          nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_model(a, b):
  pa, pb = params_of(a), params_of(b)
  assert pa.keys() == pb.keys()
  for name in pa:
    np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def metric_steps(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line)['step'] for line in lines]


@pytest.fixture(scope='module')
def full(tmp_path_factory):
  """The uninterrupted run: losses per step and the saved model."""
  result = train.run(faulty(tmp_path_factory.mktemp('full'), STEPS))
  return losses(result), result['model']


# --- kill -9 ---------------------------------------------------------------------------------

def child(workdir: str, steps: int, fault: str) -> None:
  """Trains, killing itself (SIGKILL, nothing runs after) at the fault named."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  die = lambda: os.kill(os.getpid(), signal.SIGKILL)
  if fault == 'checkpoint_write':
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def killing_finalize(self):
      if self._final_path.name == '4':  # step 4 is written but not yet committed
        die()
      return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
  elif fault == 'final_save':
    save_model, ckpt_save = saved_model.save_model, ocp.StandardCheckpointer.save
    state = {'final': False}

    def marked_save_model(*args, **kwargs):
      state['final'] = True
      return save_model(*args, **kwargs)

    def killing_save(self, *args, **kwargs):
      ckpt_save(self, *args, **kwargs)
      if state['final']:   # the parameters are written, the model folder not yet complete
        self.wait_until_finished()
        die()
    saved_model.save_model = marked_save_model
    ocp.StandardCheckpointer.save = killing_save
  train.run(faulty(workdir, steps))


def run_child(workdir, fault, cache):
  proc = subprocess.run([sys.executable, __file__, str(workdir), str(STEPS), fault],
                        env=child_env(cache), capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_a_kill_during_a_checkpoint_write_resumes_with_the_same_losses(tmp_path, full,
                                                                      compile_cache):
  run_child(tmp_path, 'checkpoint_write', compile_cache)
  assert sorted(os.listdir(tmp_path / 'checkpoints'))[0] == '2'
  assert not (tmp_path / 'checkpoints' / '4').exists() and not (tmp_path / 'model').exists()
  rerun = train.run(faulty(tmp_path, STEPS))
  assert losses(rerun) == {s: full[0][s] for s in range(3, STEPS + 1)}
  assert_same_model(rerun['model'], full[1])
  assert metric_steps(tmp_path) == list(range(1, STEPS + 1))
  # The killed save's temporary folder is cleared; what remains are finished steps.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '6']


def test_a_kill_during_the_final_save_is_repaired_by_the_rerun(tmp_path, full, compile_cache):
  run_child(tmp_path, 'final_save', compile_cache)
  assert not (tmp_path / 'model').exists()
  rerun = train.run(faulty(tmp_path, STEPS))
  assert rerun['model_dir'] == str(tmp_path / 'model') and rerun['history'] == []
  loaded, _ = saved_model.load_model(rerun['model_dir'])
  assert_same_model(loaded, full[1])
  assert metric_steps(tmp_path) == list(range(1, STEPS + 1))


# --- a corrupt newest checkpoint -------------------------------------------------------------

@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """A run stopped at step 4 with checkpoints 2 and 4: each corruption test damages a copy."""
  workdir = tmp_path_factory.mktemp('four')
  train.run(faulty(workdir, 4))
  return workdir


def largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / 'state')
           for f in names if os.sep + 'd' + os.sep in os.path.join(root, f)]
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def flip_bytes(step_dir):
  path = largest_array_file(step_dir)
  data = bytearray(open(path, 'rb').read())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
  with open(path, 'wb') as f:
    f.write(data)


def delete_metadata(step_dir):
  os.remove(step_dir / 'state' / '_METADATA')


def empty_data_state(step_dir):
  (step_dir / 'data' / 'metadata').write_text('{}')


@pytest.mark.parametrize('damage', [truncate, flip_bytes, delete_metadata, empty_data_state])
def test_a_corrupt_newest_step_is_moved_aside_and_training_goes_on(tmp_path, four_steps, full,
                                                                   damage, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(four_steps, workdir)
  damage(workdir / 'checkpoints' / '4')
  rerun = train.run(faulty(workdir, STEPS))
  # Resumed from step 2 and passed step 4 again (no StepAlreadyExistsError), nothing deleted.
  assert losses(rerun) == {s: full[0][s] for s in range(3, STEPS + 1)}
  assert_same_model(rerun['model'], full[1])
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '4.corrupt', '6']
  assert 'moved it to' in caplog.text and '4.corrupt' in caplog.text
  if damage is flip_bytes:
    assert 'does not match the checksums' in caplog.text
  # And the next rerun finds the finished run, not a loop.
  again = train.run(faulty(workdir, STEPS))
  assert again['model_dir'] and again['history'] == [] and 'nothing to train' in caplog.text


def test_an_invalid_data_iterator_state_is_refused():
  data = train_data.Replayed(lambda: iter(range(10)))
  for state in ({}, {'drawn': -1}, {'drawn': '3'}, None):
    with pytest.raises(ConfigError, match='data-iterator state'):
      data.set_state(state)
  data.set_state({'drawn': 3})
  assert next(data) == 3
  with pytest.raises(ConfigError, match='data-iterator state'):
    train_data.FromPipeline(None).set_state({})


# --- SIGTERM -----------------------------------------------------------------------------------

def test_sigterm_during_a_step_stops_after_that_step(tmp_path, monkeypatch, full):
  real = train_state.sharded_update

  def signalling_update(*args, **kwargs):
    step_fn, calls = real(*args, **kwargs), []

    def step(*a):
      calls.append(1)
      if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*a)
    return step

  monkeypatch.setattr(train_state, 'sharded_update', signalling_update)
  stopped = train.run(faulty(tmp_path, STEPS))
  assert stopped['stopped_early'] and stopped['model_dir'] is None
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']


def hang_on_draw(monkeypatch, when: int):
  """Data whose draw number `when` (0: opening it) gets SIGTERM and then never returns, as a
  source without usable records did; fails instead of hanging when SIGTERM cannot stop it."""
  real = train_data.open_batches

  def hang():
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
      pass
    raise AssertionError('SIGTERM did not stop the wait for data')

  class Hanging:

    def __init__(self, inner):
      self.inner, self.drawn = inner, 0

    def __next__(self):
      self.drawn += 1
      if self.drawn == when:
        hang()
      return next(self.inner)

    def __getattr__(self, name):
      return getattr(self.inner, name)

  def opening(*args, **kwargs):
    if when == 0:
      hang()
    return Hanging(real(*args, **kwargs))

  monkeypatch.setattr(train_data, 'open_batches', opening)


def test_sigterm_while_waiting_for_data_saves_the_last_step_and_stops(tmp_path, monkeypatch,
                                                                      full):
  hang_on_draw(monkeypatch, 3)
  stopped = train.run(faulty(tmp_path, STEPS, checkpoint_every=100))
  assert stopped['stopped_early'] and sorted(losses(stopped)) == [1, 2]
  assert os.listdir(tmp_path / 'checkpoints') == ['2']   # saved on the way out
  monkeypatch.undo()
  rest = train.run(faulty(tmp_path, STEPS, checkpoint_every=100))
  assert losses(rest) == {s: full[0][s] for s in range(3, STEPS + 1)}


def test_sigterm_while_opening_the_data_stops_at_once(tmp_path, monkeypatch):
  hang_on_draw(monkeypatch, 0)
  started = time.monotonic()
  stopped = train.run(faulty(tmp_path, STEPS))
  assert stopped['stopped_early'] and time.monotonic() - started < 10


def test_a_run_stopped_by_sigterm_exits_with_its_code(tmp_path, compile_cache):
  proc = subprocess.Popen(
      [sys.executable, '-m', 'lladax.main', '--config', os.path.join(ROOT, 'configs/tiny.py'),
       f'--config.workdir={tmp_path}', '--config.train.steps=100000',
       '--config.train.log_every=1', '--config.train.tensorboard=False',
       '--config.model.d_model=32', '--config.model.n_layers=1', '--config.data.batch_size=2'],
      cwd=ROOT, env=child_env(compile_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  deadline = time.monotonic() + 120
  while not (tmp_path / 'metrics.jsonl').exists() or not metric_steps(tmp_path):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == train_checkpoint.EXIT_STOPPED == 143, err[-3000:]
  assert 'stopped by SIGTERM at step' in err


# --- user errors --------------------------------------------------------------------------------

def test_finite_data_that_runs_out_says_how_many_batches_and_what_to_change(tmp_path):
  corpus = tmp_path / 'docs.jsonl'
  corpus.write_text(''.join(json.dumps({'text': 'ab cd ' * 20}) + '\n' for _ in range(3)))
  c = faulty(tmp_path / 'run', STEPS)
  c.data.source = 'pipeline'
  from lladax import presets  # pylint: disable=import-outside-toplevel
  c.pipeline = presets.section(presets.pipeline_config(), sources=(f'jsonl:{corpus}',),
                               seq_len=c.data.seq_len, read_threads=1, num_epochs=1)
  with pytest.raises(ConfigError, match=r'ran out after 3 batches.*num_epochs.*steps=3'):
    train.run(c)
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['2', '3']


def test_fewer_steps_than_the_checkpoint_are_refused(tmp_path, four_steps):
  shutil.copytree(four_steps, tmp_path / 'run')
  with pytest.raises(ConfigError, match=r'config.train.steps=3 is below step 4'):
    train.run(faulty(tmp_path / 'run', 3))


if __name__ == '__main__':
  child(sys.argv[1], int(sys.argv[2]), sys.argv[3])
