"""The attention benchmark recipe runs end to end (tiny shapes) and reports what it should."""
import json

import pytest

from helpers import repo_module
from lladax.attention import bench


def recipe():
  return repo_module('configs', 'attention_bench.py').get_config()


def tiny(c, **overrides):
  c.bench.update(dict(kernels=('reference', 'blockwise', 'splash', 'ring'), min_seq_len=512,
                      max_seq_len=512, heads=2, head_dim=16, block_q=64, block_kv=64, repeats=1,
                      documents=2), **overrides)
  return c


def test_flops_count_bidirectional_attention_in_full():
  b = bench.resolve(bench.BenchConfig(), 'tpu')
  assert bench.flops(b, 131072) == 4.0 * 131072 ** 2 * 32 * 128
  assert (b.max_seq_len, b.dtype, b.kv_heads) == (131072, 'bfloat16', 32)
  assert bench.resolve(bench.BenchConfig(), 'cpu').max_seq_len == 2048
  assert bench.seq_lens(b)[0] == 1024 and bench.seq_lens(b)[-1] == 131072


def test_recipe_times_every_kernel_it_can(tmp_path):
  c = tiny(recipe())
  assert c.job == 'attention_bench'
  c.workdir = str(tmp_path)
  rows = bench.run(c)
  timed = {(r['kernel'], r['seq_len']): r for r in rows if r['status'] == 'ok'}
  assert set(timed) == {('reference', 512), ('blockwise', 512)}
  for r in timed.values():
    assert r['fwd_tflops'] > 0 and r['fwd_bwd_tflops'] > 0 and r['fwd_bwd_peak_bytes'] > 0
  # Tiles of 64 keep blockwise memory far below the dense reference's T x T logits.
  peak = {k: r['fwd_bwd_peak_bytes'] for (k, _), r in timed.items()}
  assert peak['blockwise'] < peak['reference'] / 2
  skipped = {r['kernel']: r['status'] for r in rows if r['status'].startswith('skipped')}
  assert set(skipped) == {'splash', 'ring'} and 'context' in skipped['ring']
  saved = json.load(open(tmp_path / 'attention_bench.json'))
  assert saved['platform'] == 'cpu' and len(saved['results']) == len(rows)


def test_sweep_stops_where_memory_runs_out(monkeypatch):
  monkeypatch.setattr(bench, 'memory_limit', lambda: 2.0 ** 20)   # 1 MiB
  rows = bench.run(tiny(recipe(), kernels=('reference',)))
  assert len(rows) == 1 and 'GiB >' in rows[0]['status']


def test_bad_settings_name_the_fix():
  with pytest.raises(bench.ConfigError, match='kernels'):
    bench.run(tiny(recipe(), kernels=('flash9',)))
  with pytest.raises(bench.ConfigError, match='context'):
    bench.run(tiny(recipe(), context=64))
