"""The data benchmark recipe runs end to end (tiny: small rows and vocabularies, a short time)."""
import json

import pytest

from helpers import repo_module
from lladax.data import bench


def recipe():
  return repo_module('configs', 'data_bench.py').get_config()


def test_demand_follows_the_flops_formula():
  need = bench.demand(bench.BenchConfig(), 131072)
  # N = 8,015,581,184 parameters less the 126464 x 4096 embedding lookup.
  assert need['flops_per_token'] == pytest.approx(3 * (2 * 7_497_584_640 + 4 * 131072 * 4096 * 32))
  assert need['per_host'] == pytest.approx(4 * 459e12 * 0.4 / need['flops_per_token'])
  assert need['per_host'] == pytest.approx(2925, abs=1)
  assert need['step_seconds'] == pytest.approx(4194304 / (64 * need['per_host'] / 4))


def test_recipe_measures_every_tokenizer_kind(tmp_path):
  c = recipe()
  assert c.job == 'data_bench'
  c.workdir = str(tmp_path)
  c.pipeline.sources = ('text:{stdlib}/json/*.py',)
  c.bench.update(tokenizers=('bytes', 'sentencepiece', 'hf'), seq_lens=(512,), seconds=0.05,
                 train_files='{stdlib}/json/*.py', train_bytes=60_000, vocab_size=500)
  results = bench.run(c)
  assert [r['tokenizer'] for r in results] == ['bytes', 'sentencepiece', 'hf']
  for r in results:
    assert r['tokens_per_second'] > 0 and r['rows'] > 1 and r['headroom'] > 0
    assert r['documents_per_row'] >= 1 and 0.9 < r['packing_efficiency'] <= 1
  with open(tmp_path / 'data_bench.json') as f:
    assert json.load(f)['results'][2]['tokenizer'] == 'hf'
