"""The README's first command, `python -m lladax.main --config configs/demo.py`, as a user runs it."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
from jax._src import hardware_utils

from helpers import ROOT

# Lines a normal run may print on stderr: the progress bar and lladax's own INFO lines.
LLADAX_FILES = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'lladax', '**', '*.py'),
                                                       recursive=True)}


def _expected(line: str) -> bool:
  if line.startswith('train:'):
    return True
  info = re.match(r'I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ', line)
  return bool(info) and info.group(1) in LLADAX_FILES


@pytest.mark.skipif(hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
                    or hardware_utils.has_visible_nvidia_gpu(),
                    reason='an accelerator is here: jax picks the platform and its logs are its own')
def test_demo_command_trains_samples_reports_and_prints_no_library_noise(tmp_path):
  # As on a user's machine: no JAX_PLATFORMS (the test session sets it), libtpu possibly installed.
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  env['PYTHONPATH'] = ROOT
  proc = subprocess.run(
      [sys.executable, '-m', 'lladax.main', '--config', 'configs/demo.py',
       f'--config.workdir={tmp_path}', '--config.train.steps=4', '--config.train.log_every=2',
       '--config.demo_eval_examples=8'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  unexpected = [line for line in re.split(r'[\r\n]+', proc.stderr)
                if line.strip() and not _expected(line)]
  assert not unexpected, '\n'.join(unexpected[:10])
  report = json.loads((tmp_path / 'demo_results.json').read_text())
  assert report['chance'] == 0.2 and 0.0 <= report['accuracy'] <= 1.0
  assert report['steps'] == 4 and len(report['samples']) == 8
  assert all(s['prompt'].endswith('| key:') for s in report['samples'])
  assert f'retrieval accuracy {report["accuracy"]:.1%} on 8 held-out records' in proc.stdout
