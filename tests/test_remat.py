"""Remat policies that keep the attention kernels' named residuals (out, lse): same gradients,
and the backward pass runs no second attention forward (lladax/remat.py)."""
from dataclasses import replace

import pytest
from helpers import tiny_config
from remat_checks import attention_forwards, gradients, largest_difference

KEEPS = ('save_attention', 'save_qkv_attention')


def test_policies_that_keep_attention_give_the_same_gradients():
  cfg = tiny_config(n_layers=2, attention_kernel='blockwise',
                    attention_options=('block_q=4', 'block_kv=4'))
  want = gradients(cfg)
  for policy in ('full',) + KEEPS:
    assert largest_difference(gradients(replace(cfg, remat_policy=policy)), want) < 1e-6, policy


@pytest.mark.parametrize('kernel', ['blockwise', 'splash', 'flash_gpu'])
def test_the_backward_reruns_attention_only_without_its_residuals(kernel):
  cfg = tiny_config(n_layers=2, attention_kernel=kernel)
  count = {p: attention_forwards(replace(cfg, remat_policy=p))
           for p in ('none', 'full', 'save_qkv_context') + KEEPS}
  # One forward when nothing is rematerialised; 'full' and the old policies run it twice. (A
  # blockwise forward holds its row max twice, in the masked and the plain tile: counts are
  # relative to 'none'.)
  once = count['none']
  assert once >= 1 and count['full'] == count['save_qkv_context'] == 2 * once, count
  assert all(count[p] == once for p in KEEPS), count


def test_the_ring_keeps_its_residuals_too():
  # 2 simulated devices, context=2: the forward ring is two chunk kernels (one in the scan),
  # each with one row max per tile kind.
  from test_attention_sharded import run_script  # pylint: disable=import-outside-toplevel
  rows = {(r['remat'], tuple(r['options'])): r for r in run_script('attention_multidevice.py',
                                                                    'remat')}
  assert len(rows) == 8
  for (policy, options), r in rows.items():
    once = rows['none', options]['forwards']
    assert once >= 2, r
    assert r['forwards'] == (2 * once if policy == 'full' else once), (policy, options, r)
    assert r['grads'] < 1e-6, (policy, options, r)
