"""RULER under the papers' protocols against what OpenCompass 0.4.2 produced (tests/golden/data/
ruler.json, recorded by running the official dataset builders and evaluators on ruler_inputs'
files): every task's prompts character for character and answers at 1024 / 2048 (and 4096 where
the official code branches), the answer turn, the evaluators' scores, the grids, and the job end
to end with its oracle, with and without the QA files."""
import hashlib

import pytest

import json

from golden import record, ruler_inputs, ruler_record
from lladax import jobs
from lladax.config import ConfigError
from lladax.evals import haystack, ruler, ruler_opencompass as oc
from tests.test_eval_common import recipe

RECORD = record.load('ruler')
CASES = [(task, name) for task, (_, spec) in oc.TASKS.items()
         for name in RECORD['tasks'][spec['abbr']]['cases']]


def sha(text):
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  return ruler_inputs.write_all(str(tmp_path_factory.mktemp('ruler_inputs')))


@pytest.fixture(scope='module')
def counter(files):
  encoder, deviations = haystack.cl100k(files['bpe'], 'config.ruler.count_tokenizer')
  assert 'is not cl100k_base.tiktoken' in deviations[0]
  return oc.Counter(encoder.encode_refusing_special)


@pytest.fixture(scope='module')
def material(files):
  return oc.Material(oc.wonderwords_lists(), oc.read_essay(files['essay']),
                     {'squad': oc.read_qa('squad', files['squad']),
                      'hotpotqa': oc.read_qa('hotpotqa', files['hotpotqa'])})


def recorded(task):
  return RECORD['tasks'][oc.TASKS[task][1]['abbr']]


def test_word_lists_are_those_the_golden_data_was_drawn_from():
  words = oc.wonderwords_lists()
  read = {'nounlist.txt': words.nouns, 'adjectivelist.txt': words.adjs,
          'verblist.txt': words.verbs}
  digests = {name: sha('\n'.join(lst)) for name, lst in read.items()}
  assert (words.version, digests) == (RECORD['wonderwords']['version'],
                                      RECORD['wonderwords']['sha256']), (
      f'wonderwords {words.version} is installed; the papers\' lists are '
      f'{oc.WONDERWORDS_VERSION}\'s: pip install wonderwords=={oc.WONDERWORDS_VERSION}')
  assert words.version == oc.WONDERWORDS_VERSION


@pytest.mark.parametrize('task,case', CASES)
def test_prompts_and_answers_are_opencompass_character_for_character(task, case, counter,
                                                                     material):
  want = recorded(task)['cases'][case]
  got = oc.samples(task, want['length'], len(want['prompts']), 42, counter, material)
  for (prompt, answers), expected, expected_answers in zip(got, want['prompts'],
                                                           want['answers']):
    if 'text' in expected:
      assert prompt == expected['text']
    assert (len(prompt), prompt[:160], prompt[-240:]) == (
        expected['chars'], expected['head'], expected['tail'])
    assert sha(prompt) == expected['sha256']
    assert answers == expected_answers


@pytest.mark.parametrize('task', list(oc.TASKS))
def test_answer_turn_and_evaluator_are_opencompass(task):
  rec = recorded(task)
  first = rec['cases']['1024']
  assert ruler.TURN_SUFFIX == {'absent': first['turn_absent_suffix'],
                               'present': first['turn_present_suffix']}
  # A prompt quoting the template's own fields, as an essay or a paragraph could.
  for turn, suffix in ruler.TURN_SUFFIX.items():
    assert ruler.paper_prompt(ruler_record.TEMPLATE_PROBE, suffix) == first[f'turn_{turn}_probe']
  scored = rec['evaluator']
  answers = rec['cases'][scored['case']]['answers']
  golds = [a for a in answers for _ in ruler_inputs.predictions(a)]
  matches = [oc.match(task, p, g) for p, g in zip(scored['predictions'], golds)]
  assert oc.task_score(matches) == scored['score']['score']


def test_task_settings_grids_and_decoding_are_the_papers():
  for task, (kind, spec) in oc.TASKS.items():
    rec = recorded(task)
    # The loaders' defaults unless the dataset config sets it (QA: 50); no inferencer setting,
    # so the model's max_out_len (64) is the decode length.
    assert rec['tokens_to_generate'] in (None, oc.TOKENS_TO_GENERATE[kind])
    assert rec['inferencer'] == []
  assert recorded('qa_1')['tokens_to_generate'] == 50
  for protocol in ('longllada', 'ultrallada'):
    files = RECORD['grid_files'][protocol]
    assert {f['tokenizer_model'] for f in files.values()} == {ruler.TOKENIZER_MODEL[protocol]}
    assert {f['num_samples'] for f in files.values()} == {ruler.PAPER_SAMPLES}
    for script in RECORD['eval_scripts'][protocol]:
      lengths = [files[g]['lengths'][0] for g in script['grids']]
      assert set(lengths) <= set(ruler.LENGTHS[protocol])
      model = script['model']
      assert (model['max_out_len'], model['diffusion_config']['block_length'],
              model['diffusion_config']['steps']) == ruler.PAPER_DECODE
  longllada = RECORD['eval_scripts']['longllada'][0]['grids']
  assert [RECORD['grid_files']['longllada'][g]['lengths'][0] for g in longllada] == list(
      ruler.LENGTHS['longllada'])


def test_adjective_noun_keys_are_the_sorted_set_of_pairs():
  words = oc.wonderwords_lists()
  tricky = [a for a in words.adjs if '-' in a or ' ' in a or words.adjs.count(a) > 1]
  roots = [a for a in words.adjs if any(t.startswith(a + '-') for t in tricky)]
  adjs = tricky + roots + words.adjs[:40]
  want = sorted(set(f'{a}-{n}' for a in adjs for n in words.nouns))
  got = oc.SortedJoin(adjs, words.nouns)
  assert len(got) == len(want) and [got[i] for i in range(len(got))] == want
  assert len(words.keys()) == len(set(f'{a}-{n}' for a in set(words.adjs) for n in words.nouns))


def test_endless_official_retries_raise_one_sentence(counter, material):
  # VT retries with an unchanged size: OpenCompass would loop forever here.
  with pytest.raises(ConfigError, match='would retry forever'):
    oc.samples('vt', 300, 1, 42, counter, material)
  with pytest.raises(ConfigError, match='would retry forever'):
    oc.samples('niah_multikey_2', 200, 1, 42, counter, material)


def oracle_run(tmp_path, files, monkeypatch, **ruler_settings):
  """The eval_ruler job with its oracle; returns (result, the prompts the model was given)."""
  settings = dict(lengths=(2048,), samples=2, count_tokenizer=files['bpe'],
                  essay=files['essay'], squad=files['squad'], hotpotqa=files['hotpotqa'])
  settings.update(ruler_settings)
  c = recipe('eval_ruler', tmp_path, ruler=settings)
  c.eval.batch_size = 2
  c.eval.oracle = True
  seen, real = [], oc.solver

  def spy(qa_prompts):
    solve = real(qa_prompts)
    return lambda prompt: seen.append(prompt) or solve(prompt)

  monkeypatch.setattr(oc, 'solver', spy)
  return jobs.run(c), seen


def test_longllada_job_with_the_oracle_scores_100_on_the_recorded_prompts(tmp_path, files,
                                                                         monkeypatch):
  result, seen = oracle_run(tmp_path, files, monkeypatch)
  assert result['protocol'] == 'longllada' and result['answer_turn'] == 'absent'
  assert result['tasks'] == list(oc.TASKS)
  assert result['overall'] == {'niah': 100, 'vt': 100, 'agg': 100, 'qa': 100, 'avg': 100}
  want = [p['sha256'] for task in oc.TASKS
          for p in recorded(task)['cases']['2048']['prompts'][:2]]
  assert [sha(p) for p in seen] == want
  assert result['sampler']['vt']['gen_length'] == 64 and result['sampler']['vt']['steps'] == 64
  assert 'samples=2 (protocol longllada: 100)' in result['deviations']
  assert result['tokenizer_model'] == 'gpt-4' and result['not_run'] == {}
  assert (tmp_path / 'ruler_results.csv').read_text().splitlines()[-1].startswith('[avg],100')


def test_ultrallada_job_ends_prompts_with_the_answer_turn(tmp_path, files, monkeypatch):
  result, seen = oracle_run(tmp_path, files, monkeypatch, protocol='ultrallada',
                            tasks=('vt', 'qa_1'))
  assert result['answer_turn'] == 'present' and result['tokenizer_model'] == 'cl100k_base'
  want = [p['sha256'] for task in ('vt', 'qa_1')
          for p in recorded(task)['cases']['2048']['prompts'][:2]]
  assert all(p.endswith('\n\n') for p in seen)
  assert [sha(p[:-2]) for p in seen] == want
  assert result['groups'] == {'vt': {'2048': 100.0}, 'avg_2_tasks': {'2048': 100.0}}
  assert 'lengths=(2048,) (protocol ultrallada: (4096, 8192, 16384, 32768))' in (
      result['deviations'])


def test_a_run_without_qa_files_names_its_average(tmp_path, files, capsys):
  c = recipe('eval_ruler', tmp_path, ruler=dict(lengths=(2048,), samples=1,
                                                count_tokenizer=files['bpe'],
                                                essay=files['essay']))
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['tasks'] == [t for t in oc.TASKS if not t.startswith('qa')]
  assert set(result['groups']) == {'niah', 'vt', 'agg', 'avg_11_tasks'}
  assert result['overall']['avg_11_tasks'] == 100
  assert set(result['not_run']) == {'qa_1', 'qa_2'}
  assert 'config.ruler.squad is empty' in result['not_run']['qa_1']
  assert 'average is over 11 of 13 tasks' in capsys.readouterr().out


def test_scores_are_the_evaluators_and_groups_the_papers():
  # Three samples finding 1, 1/2 and 0 of their answers: 50, to 2 decimals; QA takes any.
  assert oc.task_score([1.0, 0.5, 0.0]) == 50.0
  assert oc.task_score([1.0, 0.0, 0.0]) == 33.33
  assert oc.match('qa_1', 'it is PARIS', ['London', 'Paris']) == 1.0
  assert oc.match('niah_multivalue', 'a, B', ['a', 'b', 'c', 'd']) == 0.5
  scores = {t: {'4096': 100.0 if t.startswith('niah') else 0.0} for t in oc.SUMMARY_ORDER}
  groups = oc.summarise(scores, [4096])
  assert groups['niah'] == {'4096': 100.0} and groups['agg'] == {'4096': 0.0}
  assert groups['avg'] == {'4096': 800 / 13}  # each task counts once: NIAH weighs 8 of 13


def test_bad_paper_settings_are_one_sentence_before_the_model_loads(tmp_path, files):
  with pytest.raises(ConfigError, match='config.ruler.words is for protocol lladax'):
    ruler.RulerConfig(words='/x.txt')
  bad_essay = tmp_path / 'essays.jsonl'
  bad_essay.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
  base = dict(count_tokenizer=files['bpe'], essay=files['essay'])
  for settings, message in (
      (dict(essay=files['essay']), 'count_tokenizer is empty.*cl100k_base.tiktoken'),
      (dict(base, count_tokenizer=files['essay']), 'not a local .tiktoken file'),
      (dict(count_tokenizer=files['bpe']), 'config.ruler.essay is empty'),
      (dict(base, essay=str(bad_essay)), 'essays.jsonl.* line 2 is not UTF-8'),
      # The early draw: cwe finds no room for an answer at 1024, fwe no vocabulary under 50,
      # and the 12 SQuAD questions of the test file cannot make 20 samples.
      (dict(base, tasks=('vt', 'cwe')), 'cwe at 1024: the length leaves room for no answer'),
      (dict(base, tasks=('fwe',), lengths=(40,)), 'fwe at 40: FWE draws length // 50 words'),
      (dict(base, squad=files['squad'], tasks=('qa_1',), samples=20),
       'dev-v2.0.json.* has 12 usable questions, fewer than config.ruler.samples=20')):
    c = recipe('eval_ruler', tmp_path, ruler=dict(dict(lengths=(1024,), samples=1), **settings))
    c.checkpoint = str(tmp_path / 'no_checkpoint_here')  # raises only if the model loads first
    with pytest.raises(ConfigError, match=message):
      jobs.run(c)


def test_fwe_too_short_for_its_question_stops_where_opencompass_loops(counter, material):
  # 60 tokens: a vocabulary of 1 word; the question alone is longer than the length.
  with pytest.raises(ConfigError, match='fwe at 60: the FWE prompt has .* tokens with no words'):
    oc.samples('fwe', 60, 1, 42, counter, material)


def test_a_run_extended_by_tasks_and_lengths_keeps_its_cells(tmp_path, files, monkeypatch):
  # First without the QA files (11 tasks), then with SQuAD, qa_1 and a second length: the header
  # is the same and only the new cells are computed.
  first, seen_first = oracle_run(tmp_path, files, monkeypatch, samples=1, squad='', hotpotqa='',
                                 tasks=('niah_single_2', 'vt'))
  assert len(seen_first) == 2
  second, seen = oracle_run(tmp_path, files, monkeypatch, samples=1, hotpotqa='',
                            tasks=('niah_single_2', 'vt', 'qa_1'), lengths=(1024, 2048))
  assert len(seen) == 3 * 2 - 2
  assert [r['prediction'] for r in second['cells'] if r['length'] == 2048][:2] == [
      r['prediction'] for r in first['cells']]
  assert second['cells'][-1] == dict(second['cells'][-1], task='qa_1', squad=files['squad'])
  header = json.loads((tmp_path / 'ruler_cells.jsonl').read_text().splitlines()[0])
  assert 'squad' not in header['settings'] and 'essay' not in header['settings']
  # Another essay file is other material: its tasks' cells are drawn again, the others kept.
  other = tmp_path / 'other_essays.jsonl'
  with open(files['essay'], encoding='utf-8') as f:
    other.write_text(f.read(), encoding='utf-8')
  _, seen = oracle_run(tmp_path, files, monkeypatch, samples=1, hotpotqa='', essay=str(other),
                       tasks=('niah_single_2', 'vt', 'qa_1'), lengths=(1024, 2048))
  assert len(seen) == 2


def test_lengths_count_as_tiktoken_encode_which_refuses_special_tokens(counter):
  assert counter('The grass is green.') == len(counter.encode('The grass is green.'))
  with pytest.raises(ValueError):
    counter('an essay quoting <|endoftext|>')
