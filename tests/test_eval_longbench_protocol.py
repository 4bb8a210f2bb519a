"""LongBench as the papers ran it (protocols 'longllada' / 'ultrallada'), against what the official
code produced: tests/golden/data/longbench.json holds OpenCompass 0.4.2's prompts, max_out_len,
loader rows and evaluator scores, and the LLaDACausalLM wrapper's drop_middle ids, generation
length, steps and decoded text, all recorded by tests/golden/longbench_record.py on the inputs of
tests/golden/longbench_inputs.py."""
import difflib
import json
import os
import sys
import types
import warnings

import pytest
from golden import longbench_inputs as inputs, record

from lladax import jobs, sampler
from lladax.config import ConfigError, parse
from lladax.data import tokenizers
from lladax.evals import eval_settings, longbench, metrics, model_calls, oracles, protocols
from tests.test_eval_common import recipe, tiny_checkpoint  # noqa: F401 (fixture)

GOLDEN = record.load('longbench')
RECORDS = inputs.records()


def test_the_golden_file_covers_all_21_datasets_from_the_official_configs():
  assert set(GOLDEN['datasets']) == set(longbench.METRIC) == set(RECORDS)
  assert GOLDEN['sources']['opencompass'].startswith('0.4.2')
  assert GOLDEN['wrappers_identical']  # UltraLLaDA's wrapper is LongLLaDA's file


@pytest.mark.parametrize('dataset', list(longbench.METRIC))
def test_prompts_are_opencompass_character_for_character(dataset):
  golden = GOLDEN['datasets'][dataset]
  ours = [longbench.oc_prompt(dataset, r, longbench.OC_PROMPTS[dataset]) for r in RECORDS[dataset]]
  assert ours == golden['prompts']
  assert longbench.OC_MAX_OUT_LEN[dataset] == golden['max_out_len']
  # The loader's fields, in its order (the order placeholders are filled in), and its output.
  for row in golden['loader_rows']:
    assert list(row) == [k for k, _ in longbench.oc_entry(dataset, RECORDS[dataset][0])]
  assert golden['output_column'] == ('all_labels' if dataset in longbench.OC_LABELS else 'answers')
  assert (golden['postprocessor'] is not None) == (dataset in longbench.FIRST_LINE)


def test_the_prompt_details_the_issue_names():
  assert 'as concisely as you can' in longbench.OC_PROMPTS['narrativeqa']
  assert longbench.OC_PROMPTS['multi_news'].endswith('Summary:\n')
  assert longbench.OC_PROMPTS['qasper'] == longbench.OC_PROMPTS['hotpotqa']
  assert longbench.OC_MAX_OUT_LEN['qasper'] == 32
  # Placeholders inside fields: '{context}' in an input is filled, '{answers}' emptied.
  assert 'She once wrote {input} and .?' in GOLDEN['datasets']['narrativeqa']['prompts'][1]


@pytest.mark.parametrize('dataset', list(longbench.METRIC))
def test_dataset_scores_are_the_opencompass_evaluators(dataset):
  golden = GOLDEN['datasets'][dataset]
  rows, i = [], 0
  for sample in RECORDS[dataset]:
    for prediction in inputs.predictions(dataset, sample['answers']):
      case = golden['cases'][i]
      assert case['prediction'] == prediction
      assert longbench.oc_postprocess(dataset, prediction) == case['postprocessed']
      got = longbench.oc_score(dataset, prediction, sample)
      assert got * 100 == pytest.approx(case['score'], rel=1e-12, abs=1e-12), prediction
      terms = longbench.oc_terms(dataset, prediction, sample)
      assert sum(terms) == got
      rows.append(dict(dataset=dataset, score=got, terms=terms, length=0))
      i += 1
  assert i == len(golden['cases'])
  summary = longbench.summarise_papers(rows, [dataset], False, 'longllada')
  # Added term by term as the evaluator adds: the same float, not just a close one.
  assert summary['datasets'][dataset]['score'] == golden['score']


OC_FUNCTIONS = {
    'f1_en': lambda p, refs, _: metrics.oc_f1_score(p, refs, 'en'),
    'f1_zh': lambda p, refs, _: metrics.oc_f1_score(p, refs, 'zh'),
    'rouge_en': lambda p, refs, _: metrics.oc_rouge_score(p, refs, 'en'),
    'rouge_zh': lambda p, refs, _: metrics.oc_rouge_score(p, refs, 'zh'),
    'classification': metrics.oc_classification_score,
    'retrieval_en': lambda p, refs, _: metrics.oc_retrieval_score(p, refs, 'en'),
    'retrieval_zh': lambda p, refs, _: metrics.oc_retrieval_score(p, refs, 'zh'),
    'count': lambda p, refs, _: metrics.oc_count_score(p, refs),
    'code_sim': lambda p, refs, _: metrics.oc_code_sim_score(p, refs, 'levenshtein'),
}


@pytest.mark.parametrize('kind', list(inputs.METRIC_CASES))
def test_metric_edge_cases_match_the_evaluators(kind):
  cases = GOLDEN['metric_cases'][kind]
  assert len(cases) == len(inputs.METRIC_CASES[kind])
  for case in cases:
    got = OC_FUNCTIONS[kind](case['prediction'], case['references'], case['all_classes'])
    assert got * 100 == pytest.approx(case['score'], rel=1e-12, abs=1e-12), case
    if kind == 'code_sim':
      difflib_score = metrics.oc_code_sim_score(case['prediction'], case['references'], 'difflib')
      assert difflib_score * 100 == case['score_difflib'], case


def test_code_similarity_back_ends_differ_where_recorded():
  # python-Levenshtein's 1 - 78/80 is 0.025000000000000022, so 2.5 rounds up; difflib's to 2.
  cases = {c['prediction']: c for c in GOLDEN['metric_cases']['code_sim']}
  tie = cases['a' + 'x' * 39]
  assert (tie['score'], tie['score_difflib']) == (3.0, 2.0)
  junk = cases['ba' * 110]
  assert (junk['score'], junk['score_difflib']) == (100.0, 0.0)


def _strings(n):
  """Deterministic strings over a small alphabet (ties and junk are likely)."""
  out, x = [], 12345
  for _ in range(n):
    x = (x * 1103515245 + 12345) % 2**31
    length = x % 70
    s = ''
    for _ in range(length):
      x = (x * 1103515245 + 12345) % 2**31
      s += 'ab c#'[x % 5] if x % 7 else '北'
    out.append(s)
  return out


def test_fuzz_ratio_matches_the_installed_fuzzywuzzy():
  with warnings.catch_warnings():  # without python-Levenshtein it warns that it is slow
    warnings.simplefilter('ignore')
    from fuzzywuzzy import fuzz  # pylint: disable=import-outside-toplevel
  strings = _strings(160) + ['ba' * 110, 'ab' * 111, '', 'a' + 'x' * 39, 'a' + 'y' * 39]
  pairs = list(zip(strings, strings[1:] + strings[:1]))
  backends = {'difflib': difflib.SequenceMatcher}
  try:
    from fuzzywuzzy.StringMatcher import StringMatcher  # pylint: disable=import-outside-toplevel
    backends['levenshtein'] = StringMatcher
  except ImportError:
    pass  # python-Levenshtein is not installed: its values are checked against the goldens
  for backend, matcher in backends.items():
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(fuzz, 'SequenceMatcher', matcher)
      for a, b in pairs:
        assert metrics.fuzz_ratio(a, b, backend) == fuzz.ratio(a, b), (backend, a, b)


@pytest.mark.parametrize('case', GOLDEN['truncation'], ids=lambda c: f'{c["max_seq_len"]}')
def test_drop_middle_keeps_the_wrappers_ids(case):
  ids = inputs.BosBytes().encode(case['prompt'], add_special_tokens=True)
  kept = longbench.drop_middle(ids, case['max_seq_len'])
  assert kept == case['ids']
  assert len(kept) == min(len(ids), case['max_seq_len'])


@pytest.mark.parametrize('dataset', list(longbench.METRIC))
def test_generation_lengths_steps_and_decoding_are_the_wrappers(dataset):
  golden = GOLDEN['datasets'][dataset]
  wrapper = golden['wrapper']
  ids = inputs.BosBytes().encode(golden['prompts'][0], add_special_tokens=True)
  assert longbench.drop_middle(ids, 64) == wrapper['ids']
  settings = eval_settings.decode_settings(longbench.OC_MAX_OUT_LEN[dataset], 64, 512, 'test')
  assert (settings['gen_length'], settings['steps'], settings['block_length']) == (
      wrapper['gen_length'], wrapper['steps'], wrapper['block_length'])
  # Every generated token is decoded, special ones skipped (the text after an EOS is kept).
  generation = protocols.GENERATION['longllada']
  model = types.SimpleNamespace(generation=generation, tokenizer=inputs.BosBytes(), eos=(256,))
  assert model_calls.ModelGenerator.text(model, inputs.GENERATED) == wrapper['text']


def test_the_wrappers_shared_steps_are_not_copied():
  # One wrapper instance caps `steps` in its shared dict: a 512-token dataset after a 32-token
  # one runs 64 steps. lladax caps per dataset. The papers' partitioner gives every task a
  # chunk of a single dataset (each costs more than max_task_size), so this never showed there.
  assert GOLDEN['wrapper_calls'] == [dict(max_out_len=32, gen_length=64, steps=64),
                                     dict(max_out_len=512, gen_length=512, steps=64)]
  assert eval_settings.decode_settings(512, 64, 512, 'test')['steps'] == 512


def _gold_scores():
  """Each dataset's score when every record is answered with its first gold answer, from the
  recorded evaluator values (the first prediction of each record is the gold answer)."""
  out = {}
  for dataset, golden in GOLDEN['datasets'].items():
    per = len(inputs.predictions(dataset, ['x']))
    gold = [golden['cases'][i]['score'] for i in range(0, len(golden['cases']), per)]
    out[dataset] = sum(gold) / len(gold)
  return out


def test_oracle_run_scores_as_the_evaluators_and_averages_the_groups(tmp_path):
  folder = inputs.write(str(tmp_path / 'LongBench'))
  c = recipe('eval_longbench', tmp_path / 'run', longbench=dict(data_dir=folder, max_length=3500))
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['protocol'] == 'longllada' and result['max_length'] == 3500
  expected = _gold_scores()
  scores = {d: v['score'] for d, v in result['datasets'].items()}
  assert scores == pytest.approx(expected, rel=1e-12)
  assert scores['lcc'] == 100 and scores['gov_report'] == pytest.approx(99.9999995)
  n = {d: len(RECORDS[d]) for d in RECORDS}
  groups = {g: sum(scores[d] for d in members) / len(members)
            for g, members in longbench.GROUPS.items()}
  assert result['groups'] == pytest.approx(groups)
  assert result['table'] == pytest.approx({longbench.LABELS[g]: v for g, v in groups.items()})
  averages = result['averages']
  assert averages['categories'] == pytest.approx(sum(groups.values()) / 6)
  assert averages['datasets'] == pytest.approx(sum(scores.values()) / 21)
  assert averages['questions'] == pytest.approx(
      sum(scores[d] * n[d] for d in scores) / sum(n.values()))
  assert averages['en'] == pytest.approx(sum(scores[d] for d in longbench.EN) / 16)
  assert averages['zh'] == pytest.approx(sum(scores[d] for d in longbench.ZH) / 7)
  assert result['paper_avg'] == averages['categories']
  assert result['sampler']['qasper']['gen_length'] == 64
  assert result['sampler']['gov_report'] == dict(result['sampler']['gov_report'],
                                                 gen_length=512, steps=512, block_length=64)
  assert result['sampler']['gov_report']['mask_prediction'] == 'allow'
  assert all(r['kept_tokens'] == r['prompt_tokens'] for r in result['cells'])
  # float32 in the test recipe: recorded, as is everything else that differs from the paper.
  assert result['deviations'] == ['dtype=float32 (protocol longllada: float16)',
                                  'param_dtype=float32 (protocol longllada: float16)']


def test_ultrallada_keeps_16000_tokens_and_weighs_by_questions(tmp_path):
  folder = inputs.write(str(tmp_path / 'LongBench'))
  c = recipe('eval_longbench', tmp_path / 'run', longbench=dict(
      data_dir=folder, protocol='ultrallada', datasets=('hotpotqa', 'lcc')))
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['max_length'] == 16000
  assert result['paper_avg'] == result['averages']['questions']
  assert result['averages']['categories'] is None and set(result['groups']) == set()
  assert result['missing'] == []


def test_tiny_checkpoint_run_truncates_on_token_ids(tmp_path, tiny_checkpoint, monkeypatch):
  folder = inputs.write(str(tmp_path / 'LongBench'))
  seen = []
  original = model_calls.ModelGenerator.generate_ids

  def spy(self, prompt_ids, cfg, seed=0, keep=None):
    seen.extend((list(p), cfg.gen_length, cfg.steps) for p in prompt_ids)
    return original(self, prompt_ids, cfg, seed, keep)

  monkeypatch.setattr(model_calls.ModelGenerator, 'generate_ids', spy)
  c = recipe('eval_longbench', tmp_path / 'run', longbench=dict(
      data_dir=folder, datasets=('narrativeqa', 'vcsum'), max_length=99, steps=8))
  c.checkpoint = tiny_checkpoint
  result = jobs.run(c)
  texts = [longbench.oc_prompt(d, r, longbench.OC_PROMPTS[d])
           for d in ('narrativeqa', 'vcsum') for r in RECORDS[d]]
  assert len(seen) == len(texts) == 3
  for text, (ids, gen_length, steps) in zip(texts, seen):
    full = list(text.encode('utf-8'))  # the byte tokenizer adds no special tokens
    assert len(full) > 99
    # Exactly max_length ids, the odd one at the end; not decoded back to text (the vcsum
    # prompt is cut inside a character, which a round trip through text would change).
    assert ids == full[:49] + full[-50:]
  assert [g for _, g, _ in seen] == [128, 128, 512] and {s for _, _, s in seen} == {8}
  assert [r['kept_tokens'] for r in result['cells']] == [99] * 3
  assert all(0 <= r['score'] <= 1 for r in result['cells'])
  assert 'steps=8 (protocol longllada: 512)' in result['deviations']


def test_prompt_ids_are_the_model_tokenizers_with_its_special_tokens():
  text = 'Question: where?'
  generation = protocols.GENERATION['longllada']
  model = model_calls.ModelGenerator.__new__(model_calls.ModelGenerator)
  model.tokenizer, model.generation, model.bos = inputs.BosBytes(), generation, [1]
  want = [inputs.BosBytes.BOS] + list(text.encode())
  assert model_calls.prompt_ids(model, tokenizers.ByteTokenizer(), generation, text) == want
  assert model_calls.prompt_ids(None, inputs.BosBytes(), generation, text) == want


def test_summaries_follow_opencompass_groups_and_each_papers_average():
  scores = {d: float(i) for i, d in enumerate(longbench.METRIC)}
  rows = [dict(dataset=d, score=s / 100, terms=[s / 100], length=0) for d, s in scores.items()]
  rows += [dict(dataset='lcc', score=0.5, terms=[0.5], length=0)] * 3  # lcc: (19 + 150) / 4 = 42.25
  scores['lcc'] = (19 + 150) / 4
  s = longbench.summarise_papers(rows, list(longbench.METRIC), False, 'longllada')
  assert {d: v['score'] for d, v in s['datasets'].items()} == pytest.approx(scores)
  groups = {'single_doc_qa': 1.5, 'multi_doc_qa': 5.5, 'summarization': 9.5, 'few_shot': 13.5,
            'synthetic': 17.0, 'code': (42.25 + 20) / 2}
  assert s['groups'] == pytest.approx(groups)
  assert s['table'] == pytest.approx({'SD': 1.5, 'MD': 5.5, 'Sum': 9.5, 'ICL': 13.5, 'Syn': 17.0,
                                      'Code': 31.125})
  assert s['paper_avg'] == s['averages']['categories'] == pytest.approx(sum(groups.values()) / 6)
  assert s['averages']['datasets'] == pytest.approx(sum(scores.values()) / 21)
  assert s['averages']['questions'] == pytest.approx(
      (sum(scores.values()) - scores['lcc'] + 4 * scores['lcc']) / 24)
  zh_only = {'multifieldqa_zh', 'dureader', 'vcsum', 'lsht', 'passage_retrieval_zh'}
  code = {'lcc', 'repobench-p'}
  assert s['averages']['en'] == pytest.approx(
      sum(v for d, v in scores.items() if d not in zh_only) / 16)
  assert s['averages']['zh'] == pytest.approx(
      sum(v for d, v in scores.items() if d in zh_only | code) / 7)
  # The count, retrieval and classification evaluators add each reference's share to their
  # running total: (0.1 + 0.2) + 0.3, not 0.1 + (0.2 + 0.3), which is another float.
  count = [dict(dataset='passage_count', terms=[0.1], length=0),
           dict(dataset='passage_count', terms=[0.2, 0.3], length=0)]
  got = longbench.summarise_papers(count, ['passage_count'], False, 'longllada')
  assert got['datasets']['passage_count']['score'] == (0.0 + 0.1 + 0.2 + 0.3) / 2 * 100
  assert (0.0 + 0.1 + 0.2 + 0.3) != 0.1 + (0.2 + 0.3)
  assert longbench.oc_terms('passage_count', 'It is 3 or 4.', dict(answers=['3', '4'])) == [
      0.5, 0.5]
  partial = longbench.summarise_papers(rows[:3], list(longbench.METRIC)[:3], False, 'ultrallada')
  assert partial['groups'] == {} and partial['averages']['categories'] is None
  assert partial['paper_avg'] == partial['averages']['questions'] == pytest.approx(1.0)


def test_protocol_defaults_and_deviations():
  assert longbench.LongBenchConfig().protocol == 'longllada'
  assert longbench.LongBenchConfig().prompt_length == 7500
  assert longbench.LongBenchConfig(protocol='ultrallada').prompt_length == 16000
  assert longbench.LongBenchConfig(protocol='lladax').prompt_length == 3500
  plain = sampler.SamplerConfig(gen_length=64, block_length=64, steps=64)
  assert longbench.deviations(longbench.LongBenchConfig(max_length=3500), plain) == []
  assert longbench.deviations(longbench.LongBenchConfig(max_length=4000), plain) == [
      'max_length=4000 (protocol longllada: 3500 or 7500)']
  hot = sampler.SamplerConfig(gen_length=64, block_length=64, steps=64, temperature=0.5)
  assert longbench.deviations(longbench.LongBenchConfig(code_sim='difflib'), hot) == [
      "code_sim='difflib' (protocol longllada: 'levenshtein')",
      'config.sample.temperature=0.5 (protocol longllada: 0.0)']
  assert longbench.deviations(longbench.LongBenchConfig(protocol='lladax'), hot) == []
  c = recipe('eval_longbench', '/tmp/unused')
  assert c.longbench.protocol == 'longllada'
  with pytest.raises(ConfigError, match="config.longbench.protocol='paper'"):
    longbench.LongBenchConfig(protocol='paper')
  with pytest.raises(ConfigError, match='config.longbench.code_sim'):
    longbench.LongBenchConfig(code_sim='rapidfuzz')


def test_the_recipe_runs_the_papers_precision():
  from helpers import repo_module  # pylint: disable=import-outside-toplevel
  c = repo_module('configs', 'eval_longbench.py').get_config()
  assert (c.model.dtype, c.model.param_dtype) == ('float16', 'float16')
  assert protocols.generation('longllada', parse(c).eval, parse(c).model)[1] == []


def _write(tmp_path, name, text):
  folder = tmp_path / 'bad'
  folder.mkdir(exist_ok=True)
  (folder / f'{name}.jsonl').write_bytes(text if isinstance(text, bytes) else text.encode())
  return str(folder)


@pytest.mark.parametrize('text,message', [
    ('{"input": "q", "context": "x", "answers": ["a"]}\n\n{"input": "q", "context": ',
     'line 3 is not JSON'),
    ('{"input": "q", "answers": ["a"]}\n', "line 1 has no 'context'"),
    ('{"input": "q", "context": "c", "answers": "a"}\n', 'line 1: "answers" must be a list'),
    (b'{"input": "q", "context": "\xe9", "answers": ["a"]}\n', 'line 1 is not UTF-8'),
    ('', 'holds no records'),
])
def test_bad_data_names_the_file_and_line(tmp_path, text, message):
  folder = _write(tmp_path, 'hotpotqa', text)
  c = recipe('eval_longbench', tmp_path, longbench=dict(data_dir=folder, datasets=('hotpotqa',)))
  c.eval.oracle = True
  with pytest.raises(ConfigError, match=message) as e:
    jobs.run(c)
  assert 'hotpotqa.jsonl' in str(e.value)


def test_data_the_official_scores_would_fail_on_is_refused(tmp_path):
  line = json.dumps(dict(RECORDS['passage_retrieval_en'][0], answers=['the second one']))
  folder = _write(tmp_path, 'passage_retrieval_en', line + '\n')
  with pytest.raises(ConfigError, match=r'line 1: the answer .* names no paragraph'):
    longbench.read_samples(os.path.join(folder, 'passage_retrieval_en.jsonl'), 0,
                           'passage_retrieval_en', ('input', 'context', 'answers'))
  line = json.dumps(dict(RECORDS['trec'][0], all_classes=None))
  folder = _write(tmp_path, 'trec', line + '\n')
  with pytest.raises(ConfigError, match='"all_classes" must be a list of strings for trec'):
    longbench.read_samples(os.path.join(folder, 'trec.jsonl'), 0, 'trec',
                           longbench.required_keys('trec', longbench.OC_PROMPTS['trec']))


def test_the_hugging_face_layout_is_read_too(tmp_path):
  folder = inputs.write(str(tmp_path / 'LongBench'), layout='hf')
  cfg = longbench.LongBenchConfig(data_dir=os.path.dirname(folder))
  assert longbench.dataset_files(cfg)['lcc'] == os.path.join(folder, 'lcc.jsonl')


def test_missing_packages_say_how_to_install_them(monkeypatch):
  monkeypatch.setitem(sys.modules, 'jieba', None)
  with pytest.raises(ImportError, match=r"'jieba' package; pip install 'lladax\[eval\]'"):
    metrics.oc_f1_score('北京', ['北京'], 'zh')


def test_missing_metric_packages_stop_the_run_before_the_model_loads(tmp_path, monkeypatch):
  folder = inputs.write(str(tmp_path / 'LongBench'))
  monkeypatch.setitem(sys.modules, 'rouge', None)
  c = recipe('eval_longbench', tmp_path / 'run',
             longbench=dict(data_dir=folder, datasets=('hotpotqa', 'gov_report')))
  c.checkpoint = str(tmp_path / 'no_checkpoint_here')  # raises only if the model loads first
  with pytest.raises(ConfigError, match="gov_report's OpenCompass metric needs the 'rouge' "
                                        r"package.*pip install 'lladax\[eval\]'"):
    jobs.run(c)


def test_a_run_extended_by_datasets_and_limit_keeps_its_cells(tmp_path, monkeypatch):
  folder = inputs.write(str(tmp_path / 'LongBench'))
  seen, real = [], oracles.lookup
  monkeypatch.setattr(oracles, 'lookup', lambda gold: oracles.Oracle(
      lambda prompt: seen.append(prompt) or real(gold).solve(prompt)))

  def run(**settings):
    c = recipe('eval_longbench', tmp_path / 'run', longbench=dict(data_dir=folder, **settings))
    c.eval.oracle = True
    seen.clear()
    return jobs.run(c)

  first = run(datasets=('hotpotqa',), limit=1)
  assert len(seen) == 1 and first['missing'] == []
  second = run(datasets=('hotpotqa', 'lcc'))
  assert len(seen) == len(RECORDS['hotpotqa']) - 1 + len(RECORDS['lcc'])
  assert second['cells'][0] == first['cells'][0]
  lines = (tmp_path / 'run' / 'longbench_cells.jsonl').read_text().splitlines()
  assert len(lines) == 1 + len(second['cells'])
