"""RULER under protocol lladax (lladax's own reading): every generator's output checked (lengths,
answers present exactly once, the task's structure), an oracle scoring 100 on all 13 tasks through
the job, and a tiny checkpoint run. The papers' protocols are tested in test_eval_ruler_protocol."""
import collections
import json
import re

import pytest

from lladax import jobs
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import haystack, oracles, ruler, ruler_tasks
from tests.test_eval_common import recipe, tiny_checkpoint  # noqa: F401 (fixture)

BYTES = tokenizers.ByteTokenizer()


def squad_file(tmp_path):
  paragraphs = []
  for i in range(80):
    paragraphs.append({'context': f'Paragraph {i} says that the lake number {i} is called '
                                  f'Lake Zor{i}a, near town T{i}.',
                       'qas': [{'question': f'What is lake number {i} called?',
                                'answers': [{'text': f'Lake Zor{i}a'}, {'text': f'Zor{i}a'}],
                                'is_impossible': False},
                               {'question': f'Who owns lake {i}?', 'answers': [],
                                'is_impossible': True}]})
  path = tmp_path / 'squad.json'
  path.write_text(json.dumps({'data': [{'title': 't', 'paragraphs': paragraphs}]}))
  return str(path)


def hotpot_file(tmp_path):
  items = []
  for i in range(80):
    items.append({'question': f'Which river flows past castle {i}?', 'answer': f'River Qel{i}',
                  'context': [[f'Castle {i}', [f'Castle {i} stands on a hill. ',
                                               f'The River Qel{i} flows past it.']],
                              [f'Hill {i}', [f'Hill {i} is green.']]]})
  path = tmp_path / 'hotpot.json'
  path.write_text(json.dumps(items))
  return str(path)


@pytest.fixture(scope='module')
def res(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('ruler')
  return ruler_tasks.Resources(
      ruler_tasks.essay_words(haystack.generated_documents(0)), ruler_tasks.builtin_keys(),
      ruler_tasks.word_pool(None, 2000, 0),
      {'squad': ruler_tasks.read_squad(squad_file(tmp)),
       'hotpotqa': ruler_tasks.read_hotpotqa(hotpot_file(tmp))})


def fitted(task, length, res, index=0):
  budget = length - ruler_tasks.BUDGET[ruler_tasks.TASKS[task][0]]
  sample, n = ruler_tasks.fit(lambda size: ruler_tasks.make(task, [1, index], size, res, length,
                                                            index),
                              lambda t: len(BYTES.encode(t)), budget,
                              ruler_tasks.min_size(task), task)
  return sample, n, budget


# The largest step one more haystack unit can add, in bytes: a noise paragraph, an essay word, a
# distractor needle, a numbered word, coded words, a document.
UNIT = {'niah_single_1': 100, 'niah_single_2': 20, 'niah_single_3': 20, 'niah_multikey_1': 20,
        'niah_multikey_2': 80, 'niah_multikey_3': 120, 'niah_multivalue': 20,
        'niah_multiquery': 20, 'vt': 100, 'cwe': 40, 'fwe': 40, 'qa_1': 120, 'qa_2': 120}


@pytest.mark.parametrize('task', list(ruler_tasks.TASKS))
def test_prompts_fill_the_length_up_to_one_haystack_unit(task, res):
  sample, n, budget = fitted(task, 3000, res)
  assert n == len(BYTES.encode(sample.prompt)) <= budget
  assert budget - n <= UNIT[task], (budget - n)


@pytest.mark.parametrize('task', [t for t in ruler_tasks.TASKS if t.startswith('niah')])
def test_niah_answers_are_present_exactly_once_with_their_keys(task, res):
  sample, _, _ = fitted(task, 3000, res, index=3)
  kind, spec = ruler_tasks.TASKS[task]
  assert len(sample.answers) == spec.get('values', 1) * spec.get('queries', 1)
  question = sample.prompt[sample.prompt.rindex('What are all'):]
  for value in sample.answers:
    assert sample.prompt.count(value) == 1
    needle = next(n for n in sample.needles if n.endswith(f' {value}.'))
    key = re.match(r'One of the special magic \w+ for (\S+) is', needle).group(1)
    assert key in question
  for needle in sample.needles:
    assert sample.prompt.count(needle) == 1
  if spec['haystack'] == 'essay':  # needles go between sentences
    for needle in sample.needles:
      before = sample.prompt[:sample.prompt.index(needle)].rstrip()
      assert before.endswith(('.', '!', '?', 'afterwards.')), before[-40:]
  assert sample.prompt.endswith('mentioned in the provided text are')


def test_vt_chain_is_in_order_and_its_value_unique(res):
  sample, _, _ = fitted('vt', 3000, res)
  real = sample.prompt[sample.prompt.rindex('Memorize and track'):]
  positions = [real.index(s + '\n') for s in sample.needles]
  assert positions == sorted(positions) and len(sample.answers) == 5
  value = sample.needles[0].split('= ')[1]
  context = real[:real.index('Question:')]
  assert context.count(value) == 1
  assert oracles.ruler_vt(sample.prompt).split() == sample.answers


@pytest.mark.parametrize('length,common,rare', [(3000, 6, 1), (6000, 30, 3)])
def test_cwe_common_words_repeat_as_ruler_sets(length, common, rare, res):
  sample, _, _ = fitted('cwe', length, res)
  real = sample.prompt[sample.prompt.rindex('Below is a numbered list'):]
  counts = collections.Counter(re.findall(r'\d+\. (\S+)', real.split('Question:')[0]))
  assert sorted(counts[w] for w in sample.answers) == [common] * 10
  assert set(c for w, c in counts.items() if w not in sample.answers) == {rare}


def test_fwe_answer_is_ranks_two_to_four_of_a_zipf_text(res):
  sample, _, _ = fitted('fwe', 3000, res)
  counts = collections.Counter(sample.prompt.split('coded words. ', 1)[1].split('\nQuestion')[0]
                               .split())
  ranked = [w for w, _ in counts.most_common()]
  assert ranked[0] == '....' and ranked[1:4] == sample.answers
  assert counts[ranked[3]] > counts[ranked[4]]


@pytest.mark.parametrize('task', ['qa_1', 'qa_2'])
def test_qa_gold_documents_are_mixed_in_once(task, res):
  sample, _, _ = fitted(task, 3000, res, index=4)
  assert len(re.findall(r'Document \d+:\n', sample.prompt)) == sample.size
  for doc in sample.needles:
    assert sample.prompt.count(doc) == 1
  assert any(a in sample.prompt for a in sample.answers)


def test_oracle_scores_100_on_all_13_tasks_through_the_job(tmp_path):
  c = recipe('eval_ruler', tmp_path,
             ruler=dict(protocol='lladax', lengths=(2048, 2600), samples=2,
                        squad=squad_file(tmp_path), hotpotqa=hotpot_file(tmp_path)))
  c.eval.oracle = True
  c.eval.batch_size = 2
  result = jobs.run(c)
  assert result['tasks'] == list(ruler_tasks.TASKS)
  assert result['overall'] == {'niah': 100, 'vt': 100, 'agg': 100, 'qa': 100, 'avg': 100}
  assert len(result['cells']) == 13 * 2 * 2
  assert (tmp_path / 'ruler_results.csv').read_text().startswith('task,2048,2600')


def test_a_wrong_answer_scores_zero_and_part_match_scores_qa(tmp_path):
  c = recipe('eval_ruler', tmp_path,
             ruler=dict(protocol='lladax', lengths=(2048,), samples=1,
                        tasks=('niah_multivalue', 'qa_1'), squad=squad_file(tmp_path)))
  # Two of the four values: 'all' gives 50. One of the two QA references, in other case:
  # 'part' gives 100.
  def half(prompt):
    if 'special magic' in prompt:
      return ' ' + ' '.join(oracles.ruler_niah(prompt).split(', ')[:2])
    number = re.findall(r'What is lake number (\d+) called\?', prompt)[-1]
    return f' it is ZOR{number}A'
  result = ruler.run(c, generator=oracles.Oracle(half))
  scores = result['scores']
  assert scores['niah_multivalue']['2048'] == 50
  assert scores['qa_1']['2048'] == 100


def test_tiny_checkpoint_run(tmp_path, tiny_checkpoint):
  c = recipe('eval_ruler', tmp_path,
             ruler=dict(protocol='lladax', lengths=(1024,), samples=2,
                        tasks=('niah_single_1', 'fwe'), gen_length=16, block_length=16, steps=8))
  c.checkpoint = tiny_checkpoint
  c.eval.batch_size = 2
  result = jobs.run(c)
  assert set(result['scores']) == {'niah_single_1', 'fwe'}
  assert all(0 <= r['score'] <= 100 for r in result['cells'])
  assert result['sampler']['fwe']['gen_length'] == 16 and result['rope']['base'] == 10000.0


def test_missing_qa_file_and_too_short_length_are_one_sentence(tmp_path):
  with pytest.raises(ConfigError, match='config.ruler.squad is empty'):
    ruler.RulerConfig(protocol='lladax', tasks=('qa_1',))
  c = recipe('eval_ruler', tmp_path,
             ruler=dict(protocol='lladax', lengths=(300,), samples=1, tasks=('vt',)))
  c.eval.oracle = True
  with pytest.raises(ConfigError, match='use a longer length'):
    jobs.run(c)


def test_a_task_draws_the_same_samples_alone_or_with_others_and_extension_resumes(tmp_path):
  # A task's samples are seeded by its place among all 13, so running vt alone and then adding a
  # task reuses vt's cells, and those are the cells a run of both would have made.
  def run(workdir, tasks):
    seen = []
    c = recipe('eval_ruler', workdir, ruler=dict(protocol='lladax', lengths=(2048,), samples=2,
                                                 tasks=tasks))
    c.eval.oracle = True
    solve = oracles.ruler({}).solve
    result = ruler.run(c, generator=oracles.Oracle(lambda p: seen.append(p) or solve(p)))
    return result, seen

  _, alone = run(tmp_path / 'a', ('vt',))
  extended, seen = run(tmp_path / 'a', ('niah_single_1', 'vt'))
  assert len(seen) == 2 and all('special magic' in p for p in seen)
  _, both = run(tmp_path / 'b', ('niah_single_1', 'vt'))
  assert both[2:] == alone
  assert [r['task'] for r in extended['cells']] == ['niah_single_1'] * 2 + ['vt'] * 2
