"""The plan job on evaluation recipes: each job's own model call at its longest input, compiled
for one TPU chip on this CPU host (needs libtpu for the compiles)."""
import pytest
from helpers import repo_module

from lladax import eval_calls, plan
from lladax.config import ConfigError, parse
from lladax.evals import longbench
from tests.test_plan import needs_libtpu

TINY = dict(vocab_size=1024, d_model=256, n_layers=2, n_heads=2, mlp_hidden_size=512,
            mask_token_id=1000, eos_token_id=1001, pad_token_id=1001, bos_token_id=1002,
            eot_token_id=1003)


def recipe(name, **model):
  c = repo_module('configs', name).get_config()
  c.model.update(**model)
  return c


@pytest.mark.parametrize('config,protocol,job,prompt,decode', [
    # The papers' longest inputs, padded as the jobs pad them (model_calls.bucket).
    ('eval_niah.py', 'longllada', 'eval_niah', 32768, (32, 32, 32)),
    ('eval_niah.py', 'ultrallada', 'eval_niah', 131072, (32, 32, 16)),
    ('eval_ruler.py', 'ultrallada', 'eval_ruler', 32768, (64, 64, 64)),
    ('eval_longbench.py', 'ultrallada', 'eval_longbench', 16384,
     (max(longbench.OC_MAX_OUT_LEN.values()), 64, 512)),
])
def test_evaluation_recipes_plan_their_longest_call(config, protocol, job, prompt, decode):
  c = recipe(config)
  c[job.split('_')[1]].protocol = protocol
  (call,) = eval_calls.eval_calls(parse(c))
  assert (call.job, call.batch, call.prompt) == (job, 1, prompt)
  s = call.sample
  assert (s.gen_length, s.block_length, s.steps) == decode


def test_perplexity_plans_its_scorer_at_the_longest_length():
  (call,) = eval_calls.eval_calls(parse(recipe('eval_ppl.py')))
  assert (call.job, call.prompt, call.tail, call.sample) == ('eval_ppl', 16384, 64, None)
  (call,) = eval_calls.eval_calls(parse(recipe('eval_ppl.py')), length=5000)
  assert call.prompt == 5120 and call.source.startswith('config.plan.eval_length=5000')


@needs_libtpu
def test_an_evaluation_recipe_compiles_its_sampler_and_scorer_for_one_chip(tmp_path, capsys):
  c = recipe('eval_niah.py', **TINY, dtype='bfloat16', param_dtype='bfloat16')
  c.ppl = recipe('eval_ppl.py').ppl
  c.ppl.update(lengths=(512, 1024), chunk=32)
  c.plan.update(eval_length=1024, output=str(tmp_path / 'plan.json'))
  result = plan.run(c)
  niah, ppl = result['evals']
  assert niah['status'] == ppl['status'] == 'fits'
  assert (niah['job'], niah['prompt_tokens'], niah['steps'], niah['attention']) == (
      'eval_niah', 1024, 32, 'splash')
  assert (ppl['job'], ppl['scored_tokens']) == ('eval_ppl', 32)
  # The weights sit whole on the one chip.
  params = 2 * parse(c).model.num_params()
  assert params <= niah['memory']['arguments'] < 1.1 * params
  out = capsys.readouterr().out
  assert 'evaluation plan for one chip of v5p:2x2x1' in out and 'eval_ppl' in out
  assert (tmp_path / 'plan.json').exists()


def test_an_evaluation_call_that_does_not_fit_names_the_fixes(monkeypatch):
  monkeypatch.setattr(plan.tpu_chips, 'topology_devices',
                      lambda *a: (plan.tpu_chips.CHIPS['v4'], [None]))
  monkeypatch.setattr(plan, '_compile_lowered', lambda lower: (None, 'needs 40G of 31G HBM'))
  with pytest.raises(ConfigError) as e:
    plan.run(recipe('eval_niah.py', **TINY, attention_kernel='reference'))
  message = str(e.value)
  assert message.startswith('eval_niah does not fit one v4 chip (needs 40G of 31G HBM); try '
                            "config.model.attention_kernel='auto'")
  assert 'config.eval.batch_size' not in message and 'config.eval.mesh_hook' in message
  c = recipe('eval_ppl.py', **TINY)   # 8 rows per call
  with pytest.raises(ConfigError, match='try a smaller config.eval.batch_size, or a larger chip'):
    plan.run(c)
