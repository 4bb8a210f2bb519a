"""lladax.launch_local without JAX jobs: each process gets its environment, output is prefixed per
process, and one failure stops the others at once with its exit code (the multi-process jobs
themselves are in tests/test_multihost.py)."""
import os
import subprocess
import sys
import time

from lladax import launch_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = '''
import os, sys, time
i = int(os.environ['LLADAX_PROCESS_ID'])
print('process', i, 'of', os.environ['LLADAX_NUM_PROCESSES'], os.environ['JAX_COORDINATOR_ADDRESS'],
      os.environ['XLA_FLAGS'], flush=True)
mode = sys.argv[1]
if mode == 'fail' and i == 1:
  sys.exit(3)
if mode == 'term':
  import signal
  signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
time.sleep(60 if mode != 'ok' else 0)
'''


def run(tmp_path, mode, *options):
  script = tmp_path / 'child.py'
  script.write_text(SCRIPT)
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=7 --foo')
  start = time.monotonic()
  proc = subprocess.run([sys.executable, '-m', 'lladax.launch_local', '-n', '3', '-d', '2',
                         '--script', str(script), '--grace', '5', *options, '--', mode],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  return proc, time.monotonic() - start


def test_every_process_gets_its_id_the_coordinator_and_its_devices(tmp_path):
  proc, _ = run(tmp_path, 'ok', '--log-dir', str(tmp_path / 'logs'))
  assert proc.returncode == 0, proc.stdout
  lines = [l for l in proc.stdout.splitlines() if ' process ' in l]
  assert sorted(l.split()[0] for l in lines) == ['[p0]', '[p1]', '[p2]']
  for line in lines:
    _, _, index, _, count, address, *flags = line.split()
    assert count == '3' and address.startswith('localhost:')
    assert flags == ['--foo', '--xla_force_host_platform_device_count=2']
  assert (tmp_path / 'logs' / 'p2.log').read_text().startswith('process 2 of 3')


def test_one_failure_stops_the_others_with_its_code(tmp_path):
  proc, took = run(tmp_path, 'fail')
  assert proc.returncode == 3, proc.stdout
  assert 'launch_local: process 1 exited with 3; stopping processes [0, 2]' in proc.stdout
  assert took < 20


def test_a_timeout_stops_every_process(tmp_path):
  proc, took = run(tmp_path, 'term', '--timeout', '3')
  assert proc.returncode == 124, proc.stdout
  assert 'ran past --timeout=3 s' in proc.stdout and took < 20


def test_exit_codes_read_as_a_shell_reports_them():
  assert launch_local.exit_code(-9) == 137 and launch_local.exit_code(143) == 143
  assert launch_local.describe(-9) == 'was killed by SIGKILL'


def test_sigterm_to_the_launcher_reaches_every_process(tmp_path):
  script = tmp_path / 'child.py'
  script.write_text(SCRIPT)
  proc = subprocess.Popen([sys.executable, '-m', 'lladax.launch_local', '-n', '2', '--script',
                           str(script), '--', 'term'], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if sum(' process ' in l for l in seen) == 2:
      break
  proc.terminate()
  out = ''.join(seen) + proc.communicate(timeout=30)[0]
  assert proc.returncode == 143, out
  assert 'passing SIGTERM to every process' in out and 'rerun to resume' in out
