"""Several JAX processes of one job on this machine: a multi-host recipe tried on one CPU box.

  python -m lladax.launch_local --processes 2 --devices 4 -- --config configs/tiny.py ...

starts `python -m lladax.main ARGS` once per process, each with its own CPU devices
(--xla_force_host_platform_device_count), gloo collectives over loopback, and the coordinator of
jax.distributed on localhost at a free port, passed the way launch/gpu.sh passes it
(JAX_COORDINATOR_ADDRESS, LLADAX_NUM_PROCESSES, LLADAX_PROCESS_ID). Every output line is prefixed
with its process ('[p1] ...') and, with --log-dir, also kept per process in p<i>.log.

When one process fails, the others are stopped (SIGTERM, then SIGKILL after --grace seconds) and
the launcher exits with the first failure's code (128 + signal for a killed process), so a job
never waits on a dead peer. SIGTERM or Ctrl-C to the launcher is passed on to every process: a
train job then checkpoints and every process exits with 143 (lladax.train.checkpoints.EXIT_STOPPED).
--heartbeat bounds how long JAX's coordinator waits for a process that vanished (kill -9) before
the others are told it is gone.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HEARTBEAT_ENV = 'LLADAX_HEARTBEAT_TIMEOUT_S'
SHUTDOWN_ENV = 'LLADAX_SHUTDOWN_TIMEOUT_S'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def exit_code(returncode: int) -> int:
  """A child's status as a shell reports it: 128 + N for a process ended by signal N."""
  return 128 - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
  if returncode < 0:
    try:
      return f'was killed by {signal.Signals(-returncode).name}'
    except ValueError:
      return f'was killed by signal {-returncode}'
  return f'exited with {returncode}'


def process_env(base: dict, index: int, count: int, devices: int, port: int,
                heartbeat: int | None, shutdown: int | None) -> dict:
  """The environment of process `index`: its device count, the coordinator, gloo."""
  flags = [f for f in base.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = dict(base, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS=' '.join(flags + [f'--xla_force_host_platform_device_count={devices}']),
             JAX_COORDINATOR_ADDRESS=f'localhost:{port}', LLADAX_NUM_PROCESSES=str(count),
             LLADAX_PROCESS_ID=str(index), PYTHONUNBUFFERED='1')
  if heartbeat:
    env[HEARTBEAT_ENV] = str(heartbeat)
  if shutdown:
    env[SHUTDOWN_ENV] = str(shutdown)
  return env


def _relay(stream, prefix: str, out, log_file, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ''):
    with lock:
      out.write(prefix + line)
      out.flush()
    if log_file:
      log_file.write(line)
      log_file.flush()
  stream.close()


class Group:
  """The N processes of one job, their relayed output, and stopping them together."""

  def __init__(self, commands: list[list[str]], envs: list[dict], log_dir: str | None,
               out=None):
    self.out = out or sys.stdout
    self.lock = threading.Lock()
    self.procs, self.threads, self.logs = [], [], []
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
    for i, (command, env) in enumerate(zip(commands, envs)):
      proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors='replace',
                              start_new_session=True)  # Ctrl-C reaches them through us only
      log = open(os.path.join(log_dir, f'p{i}.log'), 'w') if log_dir else None
      thread = threading.Thread(target=_relay, args=(proc.stdout, f'[p{i}] ', self.out, log,
                                                     self.lock), daemon=True)
      thread.start()
      self.procs.append(proc)
      self.threads.append(thread)
      self.logs.append(log)

  def say(self, message: str) -> None:
    with self.lock:
      self.out.write(f'launch_local: {message}\n')
      self.out.flush()

  def signal_all(self, signum: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          proc.send_signal(signum)
        except ProcessLookupError:
          pass

  def stop(self, grace: float) -> None:
    """SIGTERM to the processes still running, SIGKILL to those still running `grace` s later."""
    self.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
      time.sleep(0.1)
    for i, proc in enumerate(self.procs):
      if proc.poll() is None:
        self.say(f'process {i} did not stop within {grace:g} s of SIGTERM; killing it')
        proc.kill()
    for proc in self.procs:
      proc.wait()

  def wait(self, grace: float, timeout: float | None) -> int:
    """The job's exit code: 0 when all succeed, else the first failure's (128 + N for a signal).
    A failure or `timeout` stops the rest."""
    deadline = None if timeout is None else time.monotonic() + timeout
    first = None
    while first is None:
      codes = [p.poll() for p in self.procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        first = failed[0]
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        self.say(f'the job ran past --timeout={timeout:g} s; stopping every process')
        self.stop(grace)
        first = (None, 124)
        break
      time.sleep(0.1)
    if first is not None and first[0] is not None:
      running = [i for i, p in enumerate(self.procs) if p.poll() is None]
      self.say(f'process {first[0]} {describe(first[1])}' +
               (f'; stopping processes {running}' if running else ''))
      self.stop(grace)
    for thread in self.threads:
      thread.join(timeout=5)
    for log in self.logs:
      if log:
        log.close()
    if first is None:
      return 0
    code = exit_code(first[1])
    others = {exit_code(p.returncode) for p in self.procs}
    if code == 143 and others <= {0, 143}:
      return 143   # stopped by SIGTERM everywhere: checkpointed, restartable
    return code


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog='python -m lladax.launch_local',
      description='Run one lladax job as several JAX processes on this machine.',
      epilog='Everything after -- goes to python -m lladax.main (or to --script).')
  parser.add_argument('--processes', '-n', type=int, default=2, help='JAX processes (hosts)')
  parser.add_argument('--devices', '-d', type=int, default=1, help='CPU devices per process')
  parser.add_argument('--script', default=None,
                      help='run this Python file in each process instead of lladax.main')
  parser.add_argument('--log-dir', default=None, help='also write each process log to p<i>.log')
  parser.add_argument('--grace', type=float, default=30.0,
                      help='seconds the others get to stop after one fails (then SIGKILL)')
  parser.add_argument('--timeout', type=float, default=None,
                      help='stop the whole job after this many seconds (exit 124)')
  parser.add_argument('--heartbeat', type=int, default=None,
                      help="seconds without a peer's heartbeat before JAX declares it dead "
                           '(JAX default 100)')
  parser.add_argument('--shutdown-timeout', type=int, default=None,
                      help='seconds a finishing process waits for the others at shutdown '
                           '(JAX default 300)')
  args, rest = parser.parse_known_args(argv)
  if rest and rest[0] == '--':
    rest = rest[1:]
  if args.processes < 1 or args.devices < 1:
    parser.error('--processes and --devices must be at least 1')
  return args, rest


def main(argv: list[str] | None = None) -> int:
  args, rest = parse(sys.argv[1:] if argv is None else argv)
  program = [sys.executable, args.script] if args.script else [sys.executable, '-m',
                                                               'lladax.main']
  port = free_port()
  envs = [process_env(os.environ, i, args.processes, args.devices, port, args.heartbeat,
                      args.shutdown_timeout) for i in range(args.processes)]
  group = Group([program + rest] * args.processes, envs, args.log_dir)
  group.say(f'{args.processes} processes x {args.devices} CPU devices, coordinator '
            f'localhost:{port}')

  def forward(signum, frame):  # pylint: disable=unused-argument
    group.say(f'{signal.Signals(signum).name}: passing SIGTERM to every process')
    group.signal_all(signal.SIGTERM)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  code = group.wait(args.grace, args.timeout)
  if code:
    group.say(f'the job failed (exit {code})' if code != 143 else
              'the job stopped on SIGTERM after a checkpoint (exit 143); rerun to resume')
  return code


if __name__ == '__main__':
  sys.exit(main())
