"""lladax.torch_bench runs end to end at a tiny size: both models load the same checkpoint, agree,
and every row of the table is timed (the times themselves are printed, never checked)."""
import pytest

pytest.importorskip('torch')

from lladax import torch_bench
from lladax.config import ConfigError

TINY = ['--lengths', '32', '--train-length', '32', '--prompt', '16', '--gen', '8', '--block',
        '4', '--steps', '4', '--d-model', '32', '--heads', '2', '--layers', '2', '--mlp', '48',
        '--vocab', '128', '--repeats', '1', '--kernel', 'blockwise', '--remat', 'none']


def test_the_table_runs_at_a_tiny_size(capsys):
  result = torch_bench.run(torch_bench.parse_args(TINY))
  assert [r['work'] for r in result['rows']] == [
      'forward, 32 tokens', 'train step, 32 tokens',
      'sample, prompt 16 + 8, block 4, 4 steps']
  assert all(r['torch_s'] > 0 and r['lladax_s'] > 0 for r in result['rows'])
  assert result['logit_diff'] < 1e-5
  assert result['sample_identical']
  assert '| train step, 32 tokens |' in capsys.readouterr().out


def test_bad_arguments_name_the_fix(tmp_path):
  with pytest.raises(ConfigError, match='unknown work'):
    torch_bench.parse_args(['--skip', 'backward'])
  with pytest.raises(ConfigError, match='torch_llada.py'):
    torch_bench.load_torch_module(str(tmp_path / 'missing.py'))
