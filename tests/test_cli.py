"""The entry point as a user runs it: python -m lladax.main --config FILE [--config.x=y]."""
import json

import pytest

from helpers import run_lladax


def lladax(*args, check=True):
  return run_lladax(*args, check=check)


def test_tiny_recipe_trains_saves_and_generates(tmp_path):
  lladax('--config', 'configs/tiny.py', '--config.train.steps=4', '--config.train.log_every=2',
         f'--config.workdir={tmp_path}')
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['step'] for l in lines] == [2, 4]
  assert (tmp_path / 'model' / 'model_config.json').exists()
  assert not (tmp_path / 'model.tmp').exists()
  out = lladax('--config', 'configs/tiny.py', '--config.job=generate',
               f'--config.checkpoint={tmp_path / "model"}', '--config.sample.prompt=def ')
  assert out.stdout.startswith('def ')


def test_describe_prints_the_longllada_base():
  out = lladax('--config', 'configs/longllada.py', '--config.job=describe',
               '--config.rope.target_length=16384')
  assert 'base 7e+06' in out.stdout  # lambda 14 x 5e5
  assert '8,015,581,184 parameters' in out.stdout


@pytest.mark.parametrize('args,message', [
    (['--config.rope.rule=yarn'], "config.rope.rule='yarn' is not one of"),
    (['--config.job=fly'], "config.job='fly' is not a job"),
    (['--config.job=generate'], 'config.checkpoint is empty'),
    (['--config.sample.gen_length=10'], 'not a multiple of block_length'),
])
def test_bad_settings_fail_with_one_sentence(args, message):
  proc = lladax('--config', 'configs/tiny.py', *args, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_unknown_setting_in_a_recipe_is_named(tmp_path):
  recipe = tmp_path / 'bad.py'
  recipe.write_text('from lladax import presets\n\ndef get_config():\n'
                    '  c = presets.base("describe")\n  c.model.n_layer = 3\n  return c\n')
  proc = lladax('--config', str(recipe), check=False)
  assert proc.returncode == 2
  assert 'config.model.n_layer is not a known setting' in proc.stderr


def test_ultra128k_recipe_is_valid_and_asks_for_its_inputs(tmp_path):
  out = lladax('--config', 'configs/ultra128k.py', '--config.job=describe')
  assert 'base 2.80969e+08' in out.stdout
  proc = lladax('--config', 'configs/ultra128k.py', check=False)
  assert proc.returncode == 2 and 'config.checkpoint' in proc.stderr
  proc = lladax('--config', 'configs/ultra128k.py', f'--config.checkpoint={tmp_path}', check=False)
  assert proc.returncode == 2 and 'not a lladax model directory' in proc.stderr


def test_mesh_and_step_settings_are_checked_before_any_job_runs():
  proc = lladax('--config', 'configs/ultra128k.py', '--config.job=describe',
                '--config.mesh.context=0', check=False)
  assert proc.returncode == 2 and 'config.mesh.context=0' in proc.stderr
  proc = lladax('--config', 'configs/ultra128k.py', '--config.job=describe',
                '--config.step.microbatches=0', check=False)
  assert proc.returncode == 2 and 'config.step.microbatches' in proc.stderr
