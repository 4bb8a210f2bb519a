"""Ring, all-gather and splash kernels under real meshes match the dense reference, and compile
for TPU.

The checks run in subprocesses: tests/attention_multidevice.py with 8 simulated CPU devices, which
must be configured before jax is imported, and tests/attention_tpu_aot.py, which compiles for a
TPU topology through libtpu. Each prints its findings as JSON lines.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {'cross+padded_shard', 'single+tiny', 'empty+cross'}
EXPECTED = {
    'ring': ['ring context=2', 'ring context=4', 'ring context=8',
             'ring fsdp=2 x context=4, GQA', 'ring data=2 x context=2 x tensor=2, GQA',
             'ring context=2 x tensor=2, one kv head (repeated)', 'ring context=4, explicit axes'],
    'gather': ['all_gather fsdp=2 x context=4, GQA', 'splash fsdp=2 x context=2 x tensor=2, GQA',
               'ring with splash steps, context=2 x tensor=2, GQA'],
}


def run_script(script, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', script), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]


@pytest.mark.parametrize('group', sorted(EXPECTED))
def test_sharded_kernels_match_reference(group):
  rows = run_script('attention_multidevice.py', group)
  checks = [r for r in rows if 'fwd' in r]
  for name in EXPECTED[group]:
    assert {r['layout'] for r in checks if r['check'] == name} == LAYOUTS, name
  for r in checks:
    where = f"{r['check']} on {r['layout']}"
    assert r['finite'], where
    assert r['fwd'] <= 1e-5, (where, r)
    assert max(r['dq'], r['dk'], r['dv']) <= 1e-4, (where, r)
  if group == 'ring':
    (refusal,) = [r for r in rows if 'error' in r]
    assert refusal['error'] and 'not divisible' in refusal['error'] and 'pad' in refusal['error']


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None, reason='libtpu is not installed')
def test_kernels_compile_for_tpu():
  rows = run_script('attention_tpu_aot.py')
  if 'unavailable' in rows[0]:
    pytest.skip(f"no TPU topology: {rows[0]['unavailable']}")
  splash, ring_splash, ring = rows
  # Off TPU splash runs interpreted; on a TPU mesh it must be the Mosaic kernel.
  assert splash['mosaic'] and splash['gather'] and not splash['ring']
  assert ring_splash['mosaic'] and ring_splash['ring']
  assert ring['ring'] and not ring['mosaic']
