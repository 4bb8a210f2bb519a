"""The lm-evaluation-harness adapter against LLaDA's own harness (eval_llada.py's LLaDAEvalHarness,
run by tests/golden/sampler_record.py on the tiny network of tests/golden/sampler_inputs.py), and
end to end through the real lm-eval package (lm_eval.simple_evaluate on local tasks)."""
import json

import pytest

from golden import record, sampler_inputs as si
from lladax.data import tokenizers
from lladax.evals import lm_eval_adapter
from tests.test_eval_common import tiny_checkpoint  # noqa: F401 (fixture)

@pytest.fixture(scope='module')
def golden():
  return record.load('sampler')


@pytest.fixture(scope='module')
def model():
  return si.lladax_model('float32')


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = si.write_tokenizer(str(tmp_path_factory.mktemp('tok') / 'tokenizer.json'))
  return tokenizers.HFTokenizer(path)


def harness(model, tokenizer, **settings):
  return lm_eval_adapter.LladaxLM(model=model, tokenizer=tokenizer,
                                  **{'mc_num': 4, 'batch_size': 4, **settings})


def test_encode_pair_matches_eval_llada(golden, model, tokenizer):
  """No BOS (the tokenizer adds none, as LLaDA's), trailing spaces moved to the continuation."""
  lm = harness(model, tokenizer)
  for context, continuation in si.PAIRS:
    want = golden['harness']['encode_pair'][f'{context!r}|{continuation!r}']
    assert [list(x) for x in lm._encode_pair(context, continuation)] == want


@pytest.mark.parametrize('case', list(si.GREEDY))
def test_suffix_greedy_prediction_matches_eval_llada(golden, model, tokenizer, case):
  """The decode (the mask token a valid prediction, prompt masks candidates, guidance masking the
  whole prompt) and its verdicts for the decode itself and for a changed last token."""
  record = golden['suffix_greedy'][case]
  prefix, _, cfg = si.GREEDY[case]
  lm = harness(model, tokenizer, cfg=cfg)
  assert lm._greedy_decode(prefix, si.GREEDY_LENGTH) == record['decoded']
  assert [lm._is_greedy(prefix, t) for t in record['targets']] == record['verdicts']
  assert record['verdicts'] == [True, False]


@pytest.mark.parametrize('case', list(si.UNTIL))
def test_generate_until_matches_eval_llada(golden, model, tokenizer, case):
  """Fixed gen_length / steps / block_length, decoded with special tokens, cut at the until
  strings, re-tokenized and decoded without them: the official texts, character for character
  (one is cut inside the text of a special token; one prompt holds a mask token)."""
  record = golden['harness']['generate_until'][case]
  settings, requests = si.UNTIL[case]
  lm = harness(model, tokenizer, **settings)
  cfg = lm._official_settings()
  assert lm._generate([lm._tokens(c) for c, _ in requests], cfg, 0) == record['generated']
  texts = lm.generate_until([(context, {'until': stops, 'max_gen_toks': 2})
                             for context, stops in requests])
  assert texts == record['texts']


def test_settings_are_checked(model, tokenizer):
  with pytest.raises(lm_eval_adapter.ConfigError, match='multiple of batch_size'):
    harness(model, tokenizer, mc_num=10, batch_size=4)
  with pytest.raises(lm_eval_adapter.ConfigError, match='mc_batch is now batch_size'):
    harness(model, tokenizer, mc_batch=4)
  with pytest.raises(lm_eval_adapter.ConfigError, match='not a lladax lm-eval model argument'):
    harness(model, tokenizer, cfg_scal=1.0)
  with pytest.raises(lm_eval_adapter.ConfigError, match='gen_length'):
    harness(model, tokenizer, gen_length=10, block_length=4)
  with pytest.raises(lm_eval_adapter.ConfigError, match='max_length'):
    harness(model, tokenizer, max_length=5).loglikelihood([('abcd', 'ef')])


def write_tasks(directory) -> str:
  """A multiple-choice (loglikelihood) and a generate_until task over one local jsonl file."""
  rows = [{'question': f'{w} and', 'choices': [' x', ' y'], 'label': i % 2, 'answer': w}
          for i, w in enumerate(['cats', 'dogs', 'eels'])]
  data = directory / 'data.jsonl'
  data.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  common = (f'dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n'
            f'  cache_dir: {directory / "cache"}\ntest_split: test\n'
            'doc_to_text: "{{question}}"\n')
  (directory / 'mc.yaml').write_text(
      'task: lladax_test_mc\noutput_type: multiple_choice\n' + common +
      'doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n'
      '  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n')
  (directory / 'gen.yaml').write_text(
      'task: lladax_test_gen\noutput_type: generate_until\n' + common +
      'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["e"]\n  max_gen_toks: 3\n'
      'metric_list:\n  - metric: exact_match\n    aggregation: mean\n'
      '    higher_is_better: true\n')
  return str(directory)


def test_simple_evaluate_runs_the_adapter_end_to_end(tmp_path, tiny_checkpoint):
  """lm-eval 0.4.13 itself (no stand-in): its task loading, request building, the adapter
  registered as 'lladax' with lm-eval's --model_args strings, and its metrics."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  cls = lm_eval_adapter.harness_class()
  from lm_eval.api import registry  # pylint: disable=import-outside-toplevel
  assert registry.MODEL_REGISTRY['lladax'] is cls and lm_eval_adapter.harness_class() is cls
  lm = cls.create_from_arg_string(
      f'checkpoint={tiny_checkpoint},mc_num=4,cfg=0.5,gen_length=4,steps=4,block_length=4',
      {'batch_size': '2', 'max_batch_size': None, 'device': 'cpu'})
  assert (lm.batch_size, lm.mc_num, lm.cfg, lm.is_check_greedy) == (2, 4, 0.5, True)
  tasks = TaskManager(include_path=write_tasks(tmp_path), include_defaults=False)
  out = lm_eval.simple_evaluate(model=lm, tasks=['lladax_test_mc', 'lladax_test_gen'],
                                task_manager=tasks, bootstrap_iters=0, log_samples=True)
  results, samples = out['results'], out['samples']
  assert 0.0 <= results['lladax_test_mc']['acc,none'] <= 1.0
  assert 0.0 <= results['lladax_test_gen']['exact_match,none'] <= 1.0
  mc = samples['lladax_test_mc']
  assert len(mc) == 3 and all(len(s['filtered_resps']) == 2 for s in mc)
  context, continuation = mc[0]['arguments'][0]
  assert (context, continuation) == ('cats and', '  x')
  want = lm.loglikelihood([(context, continuation)])[0]
  assert tuple(mc[0]['filtered_resps'][0]) == pytest.approx(want)  # keyed by the tokens
  gen = samples['lladax_test_gen']
  texts = lm.generate_until([s['arguments'][0] for s in gen])
  assert [s['resps'][0][0] for s in gen] == texts
  assert all('e' not in t and len(t) <= 4 for t in texts)  # gen_length 4 bytes
