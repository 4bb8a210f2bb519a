"""Start-up mistakes end as one `lladax:` sentence naming the setting and the fix (exit code 2),
never as a traceback, a job that runs on a wrong value, or one that fails minutes later."""
import dataclasses
import errno
import math
import os
import subprocess
import sys

import helpers
import ml_collections
import pytest
from helpers import repo_module, run_lladax, tiny_config

from lladax import config as config_lib, jobs, main, sharding
from lladax.config import ConfigError
from lladax.evals import perplexity
from lladax.hf import params as hf_params
from lladax.model_config import ModelConfig, RopeConfig
from lladax.train.optimizer import OptimConfig


def one_sentence(*args) -> str:
  """The stderr of a run that must fail as one `lladax:` line and nothing else."""
  proc = run_lladax(*args, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('lladax: ') and proc.stderr.count('\n') == 1, proc.stderr[-2000:]
  return proc.stderr


# ---------------------------------------------------------------------------------------------
# The command line (runs python -m lladax.main)


@pytest.mark.parametrize('override,message', [
    ('--config.train.stpes=5',
     'config.train.stpes is not a setting of configs/tiny.py; did you mean config.train.steps?'),
    ('--config.mesh.context=2',
     'configs/tiny.py has no config.mesh section, so --config.mesh.context has nothing to set; '
     'add c.mesh = presets.section(sharding.MeshConfig) to the recipe.'),
])
def test_an_override_the_recipe_lacks_is_one_sentence(override, message):
  assert one_sentence('--config', 'configs/tiny.py', override) == f'lladax: {message}\n'


def test_a_workdir_that_is_a_file_is_refused_before_the_job_starts(tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('mine')
  err = one_sentence('--config', 'configs/tiny.py', f'--config.workdir={path}')
  assert f'config.workdir={path} is a file, not a folder' in err
  assert path.read_text() == 'mine'


FULL_DISK = """
import builtins, os
_open, _workdir = builtins.open, os.environ['LLADAX_TEST_FULL_DIR']

def _full(file, mode='r', *args, **kwargs):
  # Every file the job writes under the workdir is /dev/full, which fails writes with ENOSPC.
  if isinstance(file, str) and file.startswith(_workdir) and set(mode) & set('wxa'):
    return _open('/dev/full', mode.replace('x', 'w'), *args, **kwargs)
  return _open(file, mode, *args, **kwargs)

builtins.open = _full
"""


def test_a_full_disk_is_one_sentence_naming_where(tmp_path):
  site, workdir = tmp_path / 'site', tmp_path / 'work'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(FULL_DISK)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=f'{site}{os.pathsep}{helpers.ROOT}',
             LLADAX_TEST_FULL_DIR=str(workdir))
  proc = subprocess.run(
      [sys.executable, '-m', 'lladax.main', '--config', 'configs/attention_bench.py',
       f'--config.workdir={workdir}', "--config.bench.kernels=('reference',)",
       '--config.bench.min_seq_len=16', '--config.bench.max_seq_len=16', '--config.bench.heads=1',
       '--config.bench.head_dim=8', '--config.bench.repeats=1', '--config.bench.backward=False'],
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.splitlines()
  assert 'Traceback' not in proc.stderr and sum(l.startswith('lladax:') for l in lines) == 1
  assert f'the disk is full: a file in {workdir} could not be written' in lines[-1]
  assert 'free space there or pass another --config.workdir' in lines[-1]


# ---------------------------------------------------------------------------------------------
# The same checks as functions


def test_override_paths_are_checked_against_the_recipe():
  config = repo_module('configs', 'tiny.py').get_config()
  main_check = lambda path: config_lib.check_override(config, path, 'r.py', jobs.section_hints())
  main_check('train.steps')
  main_check('model.n_kv_heads')  # a placeholder (None) is a setting too
  with pytest.raises(ConfigError, match=r'config.train.steps is a setting, not a section'):
    main_check('train.steps.x')
  with pytest.raises(ConfigError, match=r'config.nothing_like_it is not a setting of r.py; '
                                        r'config has checkpoint, data'):
    main_check('nothing_like_it')


def test_disk_full_is_found_behind_a_wrapping_error():
  try:
    try:
      raise OSError(errno.ENOSPC, 'No space left on device', '/w/checkpoints/7/x')
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as wrapped:
    full = main._disk_full(wrapped)  # pylint: disable=protected-access
  assert main._disk_full_message(full, '/w').startswith(  # pylint: disable=protected-access
      'the disk is full: /w/checkpoints/7/x could not be written')
  assert main._disk_full(ValueError('x')) is None  # pylint: disable=protected-access


def test_a_workdir_that_cannot_be_written_or_created_is_refused(tmp_path, monkeypatch):
  (tmp_path / 'f').write_text('')
  with pytest.raises(ConfigError, match='cannot be created because .* is a file'):
    jobs.check_workdir(str(tmp_path / 'f' / 'run'))
  jobs.check_workdir(str(tmp_path / 'new' / 'run'))
  assert not (tmp_path / 'new').exists()  # checked, not created
  assert os.listdir(tmp_path) == ['f']    # and the probe left nothing behind

  def refused(**_):
    raise PermissionError(errno.EACCES, 'Permission denied')
  monkeypatch.setattr(jobs.tempfile, 'TemporaryFile', refused)
  with pytest.raises(ConfigError, match=r'is not writable \(Permission denied in '):
    jobs.check_workdir(str(tmp_path))


@pytest.mark.parametrize('kernel,options,message', [
    ('blockwise', ('block_q=0',), "sets block_q=0 for the 'blockwise' kernel; it must be a "
                                  'positive integer'),
    ('blockwise', ('blok_q=64',), "sets 'blok_q', which the 'blockwise' attention kernel does "
                                  'not know; it takes block_q, block_kv'),
    ('reference', ('block_q=64',), "the 'reference' attention kernel does not know; it takes "
                                   'no options'),
    ('ring', ('step_kernel=flash',), "step_kernel='flash' for the 'ring' kernel; choose one of "
                                     'blockwise, splash'),
    ('splash', ('interpret=yes',), "interpret='yes' for the 'splash' kernel; it must be True "
                                   'or False'),
    ('all_gather', ('interpret=True',), "uses only with inner=splash"),
])
def test_attention_options_are_checked_against_the_kernel(kernel, options, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(')):
    tiny_config(attention_kernel=kernel, attention_options=options)


def test_valid_attention_options_are_accepted():
  cfg = tiny_config(attention_kernel='ring',
                    attention_options=('step_kernel=splash', 'interpret=True', 'block_q=128'))
  assert cfg.attention_kwargs == {'step_kernel': 'splash', 'interpret': True, 'block_q': 128}


def test_a_sequence_the_context_axis_does_not_divide_is_refused_at_start_up():
  config = repo_module('configs', 'tiny.py').get_config()
  mesh = sharding.MeshConfig(fsdp=1, context=-1)
  config.mesh = ml_collections.ConfigDict(dataclasses.asdict(mesh))
  config.data.seq_len = 63
  four = [object()] * 4   # the context axis fills four devices
  with pytest.raises(ConfigError, match=r'config.data.seq_len=63 is not divisible by the context '
                                        r'mesh axis \(4 shards\); make it a multiple of 4'):
    jobs.check_sequence_split(config_lib.parse(config), four)
  config.data.seq_len = 64
  jobs.check_sequence_split(config_lib.parse(config), four)


def test_a_pipeline_source_without_a_pipeline_section_names_what_is_missing():
  config = repo_module('configs', 'tiny.py').get_config()
  config.data.source = 'pipeline'
  with pytest.raises(ConfigError, match=r"config.data.source='pipeline' needs a config.pipeline "
                                        'section') as e:
    jobs.run(config)
  assert '131072' not in str(e.value)


@pytest.mark.parametrize('field', ['mc_batch', 'mc_samples', 'chunk', 'chunk_stride'])
def test_ppl_counts_must_be_positive(field):
  with pytest.raises(ConfigError, match=f'config.ppl.{field}=0 must be positive'):
    perplexity.PplConfig(**{field: 0})


@pytest.mark.parametrize('field', ['target_length', 'train_length', 'd_crit', 'theta'])
def test_rope_lengths_must_be_positive(field):
  with pytest.raises(ConfigError, match=f'config.rope.{field}=-5(.0)? must be positive'):
    RopeConfig(**{'rule': 'ntk', 'target_length': 8192, field: -5})


def test_a_string_where_config_json_needs_a_number_names_the_field():
  hf = dict(hf_params.LLADA_8B_CONFIG, n_heads='32')
  with pytest.raises(ConfigError, match=r"config.json gives an invalid model: config.model."
                                        r"n_heads must be an integer, got '32'"):
    hf_params.config_from_hf(hf, param_dtype='float32', dtype='bfloat16')
  with pytest.raises(ConfigError, match='config.model.weight_tying must be True or False'):
    ModelConfig(weight_tying='no')


def test_model_config_accepts_numbers_of_any_kind_as_their_type():
  import numpy as np  # pylint: disable=import-outside-toplevel
  cfg = tiny_config(n_heads=np.int64(4), rope_theta=10000, attention_kernel='blockwise',
                    attention_options=['block_q=4'])
  assert type(cfg.n_heads) is int and type(cfg.rope_theta) is float
  assert cfg.attention_options == ('block_q=4',)


@pytest.mark.parametrize('setting', [
    {'learning_rate': math.nan}, {'learning_rate': math.inf}, {'learning_rate': 0.0},
    {'warmup_steps': -5}, {'decay_steps': -1}, {'b1': 1.5}, {'b1': 1.0}, {'b2': -0.1},
    {'eps': 0.0}, {'weight_decay': math.nan}, {'clip_norm': -1.0},
    {'final_lr_fraction': -0.5},
])
def test_optimizer_settings_outside_their_range_are_refused(setting):
  (name, value), = setting.items()
  with pytest.raises(ConfigError, match=f'config.optim.{name}={value} is outside'):
    OptimConfig(**setting)


def test_eval_ppl_says_it_has_no_oracle(tmp_path):
  config = repo_module('configs', 'eval_ppl.py').get_config()
  config.workdir = str(tmp_path)
  config.eval.oracle = True
  with pytest.raises(ConfigError, match='config.eval.oracle=True does not apply to eval_ppl, '
                                        'which has no oracle'):
    perplexity.run(config)
  config.eval.oracle = False
  with pytest.raises(ConfigError, match='config.checkpoint is empty') as e:
    perplexity.run(config)
  assert 'oracle' not in str(e.value)


# ---------------------------------------------------------------------------------------------
# The table of sections: every section a recipe holds is parsed when the job starts


@pytest.mark.parametrize('name,job', [(name, 'describe') for name in config_lib.SECTIONS] +
                         [('bench', 'attention_bench'), ('bench', 'data_bench')])
def test_a_bad_setting_in_any_section_fails_at_start_up_whichever_job_runs(name, job):
  from lladax import presets  # pylint: disable=import-outside-toplevel
  c = presets.base(job)
  c[name] = presets.section(config_lib.section_class(name, job))
  c[name].unlikely_setting = 1
  with pytest.raises(ConfigError, match=rf'config\.{name}\.unlikely_setting is not a known '
                                        'setting'):
    jobs.run(c)


def test_a_parsed_recipe_is_typed_once_and_reads_absent_sections_as_their_defaults():
  from lladax import presets, sampler  # pylint: disable=import-outside-toplevel
  c = presets.base('describe')
  c.sample.prompt = 'abc'
  recipe = config_lib.parse(c)
  assert config_lib.parse(recipe) is recipe
  assert isinstance(recipe.model, ModelConfig) and isinstance(recipe.sample, sampler.SamplerConfig)
  assert recipe.input('sample.prompt') == 'abc' and recipe.input('nothing.here', 7) == 7
  assert not recipe.has('mesh') and recipe.mesh == sharding.MeshConfig()
  with pytest.raises(AttributeError):
    recipe.not_a_section  # pylint: disable=pointless-statement
