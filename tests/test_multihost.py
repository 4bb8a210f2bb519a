"""Multi-host for real: the train, data and eval paths as several JAX processes on this machine
(lladax.launch_local: CPU devices per process, gloo collectives over loopback), against the same
recipe in one process of 8 devices.

Every run is a subprocess (the device count is fixed when JAX starts), so these tests are slow
(~5 min on 2 cores) and marked `multihost`: `pytest -m multihost` runs them alone,
`-m 'not multihost'` leaves them out (and keeps the fast unit checks at the end). Losses are compared to rtol 1e-5: the same batches on the
same logical mesh give bitwise equal losses here; a mesh split differently (fsdp 4 against
data 2 x fsdp 2) reduces in another order.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lladax import launch_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
DOCS = 48
SMALL = ('--config.model.d_model=32', '--config.model.n_layers=1',
         '--config.model.mlp_hidden_size=64', '--config.data.seq_len=32',
         '--config.pipeline.seq_len=32', f'--config.train.steps={STEPS}',
         '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=10')
HEARTBEAT = 10   # seconds until JAX declares a vanished process dead


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp('corpus') / 'docs.jsonl'
  rng = np.random.default_rng(0)
  words = ['alpha', 'beta', 'gamma', 'delta', 'eps', 'zeta', 'eta', 'theta']
  path.write_text(''.join(json.dumps({'text': f'<doc {i}> ' + ' '.join(
      rng.choice(words, rng.integers(1, 4)))}) + '\n' for i in range(DOCS)))
  return str(path)


def recipe_args(workdir, corpus, *extra) -> list[str]:
  return ['--config', 'configs/multihost_tiny.py', f'--config.workdir={workdir}',
          f"--config.pipeline.sources=('jsonl:{corpus}',)", *SMALL, *extra]


def env() -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)


def one_process(args, timeout=240) -> subprocess.CompletedProcess:
  """python -m lladax.main on one process of 8 CPU devices, no coordinator."""
  e = env()
  for name in ('JAX_COORDINATOR_ADDRESS', 'LLADAX_NUM_PROCESSES', 'LLADAX_PROCESS_ID'):
    e.pop(name, None)
  e['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  return subprocess.run([sys.executable, '-m', 'lladax.main', *args], cwd=ROOT, env=e,
                        capture_output=True, text=True, timeout=timeout)


def launched(args, processes=2, devices=4, timeout=240, script=None):
  """The job through `python -m lladax.launch_local`, as a user starts it."""
  extra = ['--script', script] if script else []
  return subprocess.run(
      [sys.executable, '-m', 'lladax.launch_local', '-n', str(processes), '-d', str(devices),
       '--heartbeat', str(HEARTBEAT), '--grace', '20', '--timeout', str(timeout - 20), *extra,
       '--', *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def started(args, log_dir, processes=2, devices=4) -> launch_local.Group:
  """The processes of a job without the launcher's supervision, as on a pod: a test signals
  one and watches what the others do on their own."""
  port = launch_local.free_port()
  envs = [launch_local.process_env(env(), i, processes, devices, port, HEARTBEAT, HEARTBEAT)
          for i in range(processes)]
  os.makedirs(log_dir, exist_ok=True)
  out = open(os.path.join(log_dir, 'all.log'), 'w')  # pylint: disable=consider-using-with
  return launch_local.Group([[sys.executable, '-m', 'lladax.main', *args]] * processes, envs,
                            log_dir, out=out)


def ok(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 0, (f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n'
                                f'{proc.stderr[-3000:]}')
  return proc.stdout + proc.stderr


def losses(workdir) -> dict[int, float]:
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  steps = [r['step'] for r in records]
  assert steps == sorted(set(steps)), f'metrics.jsonl holds steps {steps}'
  return {r['step']: r['loss'] for r in records}


def assert_same_losses(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-5)


def wait_for(condition, what: str, timeout=180):
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f'no {what} within {timeout} s')
    time.sleep(0.1)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, corpus):
  """The recipe on one process of 8 devices: the losses every other topology must give."""
  workdir = tmp_path_factory.mktemp('one')
  ok(one_process(recipe_args(workdir, corpus)))
  return workdir


@pytest.fixture(scope='module')
def pair(tmp_path_factory, corpus):
  """The same recipe on 2 processes of 4 devices (fsdp 4 x context 2, ring attention)."""
  workdir = tmp_path_factory.mktemp('two')
  return workdir, ok(launched(recipe_args(workdir, corpus)))


@pytest.mark.multihost
def test_two_processes_train_like_one(reference, pair):
  workdir, output = pair
  assert '[p0] ' in output and '[p1] ' in output
  assert "{'data': 1, 'fsdp': 4, 'context': 2, 'tensor': 1} mesh" in output
  assert_same_losses(losses(workdir), losses(reference))
  # One model directory, written together and renamed once; nothing left beside it.
  assert sorted(os.listdir(workdir / 'model')) == ['checksums.json', 'model_config.json', 'params']
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'metrics.jsonl', 'model']


@pytest.mark.multihost
def test_each_document_is_read_by_exactly_one_process(corpus):
  script = os.path.join(ROOT, 'tests', 'multihost_data_worker.py')
  output = ok(launched([corpus, str(DOCS)], script=script, timeout=120))
  assert f'[p0] OK documents per process [{DOCS // 2}, {DOCS // 2}]' in output


@pytest.mark.multihost
def test_stops_and_kills_resume_across_topologies_with_the_same_losses(reference, corpus,
                                                                       tmp_path):
  """A 1-process checkpoint resumed on 2 processes; SIGTERM to one of them stops both with a
  checkpoint (exit 143); the rerun, kill -9 of one process, ends the other within the heartbeat
  bound with one lladax line; the last rerun resumes the 2-process checkpoint on 1 process. The
  losses are the uninterrupted run's throughout."""
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns('model'))
  for step in os.listdir(workdir / 'checkpoints'):
    if step != '2':
      shutil.rmtree(workdir / 'checkpoints' / step)
  lines = (workdir / 'metrics.jsonl').read_text().splitlines(keepends=True)
  (workdir / 'metrics.jsonl').write_text(''.join(lines[:2]))   # as the run of step 2 left it
  args = recipe_args(workdir, corpus)

  # SIGTERM to process 1 once step 3 is logged: both checkpoint the same step and exit 143.
  group = started(args, str(tmp_path / 'term'))
  try:
    wait_for(lambda: max(losses(workdir)) >= 3, 'step 3')
    group.procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=90) for p in group.procs]
  finally:
    group.stop(5)
  assert codes == [143, 143], (tmp_path / 'term' / 'p0.log').read_text()[-3000:]
  stopped = max(int(s) for s in os.listdir(workdir / 'checkpoints'))
  assert 3 <= stopped < STEPS and stopped == max(losses(workdir))
  assert not (workdir / 'model').exists()

  # Resume on 2 processes, kill -9 process 1 once a later checkpoint is written.
  later = lambda: [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  group = started(args, str(tmp_path / 'kill'))
  try:
    wait_for(lambda: max(later()) > stopped, 'a new checkpoint')
    group.procs[1].kill()
    killed = time.monotonic()
    code = group.procs[0].wait(timeout=HEARTBEAT + 60)
    took = time.monotonic() - killed
  finally:
    group.stop(5)
  log = (tmp_path / 'kill' / 'p0.log').read_text()
  # Whichever notices first: the collective's closed connection (lladax's line, exit 75) or JAX's
  # coordinator, which saw the process vanish and aborts the others with its own sentence.
  ours = code == 75 and ('lladax: process 0 of 2 stopped because another process of the job is '
                         'gone') in log
  jaxs = code == -signal.SIGABRT and 'This most likely indicates that another task died' in log
  assert ours or jaxs, (code, log[-3000:])
  assert took < HEARTBEAT + 30

  # The rest on one process of 8 devices, from the checkpoint the two processes wrote.
  ok(one_process(args))
  assert_same_losses(losses(workdir), losses(reference))
  assert (workdir / 'model' / 'checksums.json').exists()


@pytest.mark.multihost
def test_two_processes_as_two_slices_train_like_one(reference, corpus, tmp_path):
  args = recipe_args(tmp_path, corpus, '--config.mesh.dcn_data=2', '--config.mesh.fsdp=2',
                     '--config.mesh.slices=processes', '--config.train.steps=4',
                     '--config.train.save=False')
  output = ok(launched(args))
  assert "{'data': 2, 'fsdp': 2, 'context': 2, 'tensor': 1} mesh" in output
  want = {s: v for s, v in losses(reference).items() if s <= 4}
  assert_same_losses(losses(tmp_path), want)


def niah_args(model, workdir) -> list[str]:
  return ['--config', 'configs/eval_niah.py', f'--config.checkpoint={model}',
          f'--config.workdir={workdir}', '--config.tokenizer.kind=bytes',
          '--config.niah.protocol=lladax', '--config.niah.grid=custom',
          '--config.niah.lengths=(200,400)', '--config.niah.repeats=1',
          '--config.niah.depths=(0.0,50.0,100.0)', '--config.niah.length_buffer=100',
          '--config.model.dtype=float32', '--config.model.param_dtype=float32',
          '--config.niah.steps=8', '--config.niah.gen_length=8', '--config.niah.block_length=8']


@pytest.mark.multihost
def test_eval_on_two_processes_writes_what_one_writes_once_and_resumes(pair, tmp_path):
  model = pair[0] / 'model'   # written by 2 processes, read by 1 and by 2
  ok(one_process(niah_args(model, tmp_path / 'one')))
  args = niah_args(model, tmp_path / 'two')
  cells = tmp_path / 'two' / 'niah_cells.jsonl'
  group = started(args, str(tmp_path / 'logs'), devices=1)
  try:
    wait_for(lambda: cells.exists() and len(cells.read_text().splitlines()) >= 3, 'two cells')
    group.procs[0].kill()
    group.procs[1].wait(timeout=HEARTBEAT + 60)
  finally:
    group.stop(5)
  assert not (tmp_path / 'two' / 'niah_results.json').exists()
  ok(launched(args, devices=1))
  for name in ('niah_results.json', 'niah_results.csv'):
    assert (tmp_path / 'two' / name).read_text() == (tmp_path / 'one' / name).read_text(), name
  # Every cell once (two processes appending would write each twice), with one process's result.
  got, want = (cell_lines(tmp_path / d / 'niah_cells.jsonl') for d in ('two', 'one'))
  assert len(got) == len(set(got)) == 6 + 1 and set(got) == set(want)


def cell_lines(path) -> list[str]:
  return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()]


def test_only_process_0_writes_evaluation_files(tmp_path, monkeypatch):
  """The other processes compute the same cells and keep them in memory: two writers of one file
  would each rename their own copy over the other's."""
  from lladax import multihost  # pylint: disable=import-outside-toplevel
  from lladax.evals import results  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(multihost.jax, 'process_index', lambda: 1)
  store = results.ResultStore(str(tmp_path / 'cells.jsonl'), {'a': 1})
  store.add({'cell': 0}, {'score': 5})
  store.close()
  assert store.get({'cell': 0}) == {'score': 5}
  results.write_json(str(tmp_path / 'r.json'), {'x': 1})
  results.write_csv(str(tmp_path / 'r.csv'), [{'x': 1}])
  assert results.try_plot(lambda: str(tmp_path / 'p.png')) is None
  assert os.listdir(tmp_path) == []
