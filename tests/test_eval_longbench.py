"""LongBench under protocol 'lladax' (THUDM/LongBench's pred.py as lladax reads it): middle
truncation, prompts and post-processing, a gold-answer run scoring 100 on every metric family,
grouping and weighting, LongBench-E buckets, and a tiny checkpoint run. The papers' protocol is
tested in test_eval_longbench_protocol.py."""
import json

import pytest

from lladax import jobs
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import longbench
from tests.test_eval_common import recipe, tiny_checkpoint  # noqa: F401 (fixture)

BYTES = tokenizers.ByteTokenizer()

SAMPLES = {
    'narrativeqa': [{'input': 'Who sails?', 'context': 'Ann sails. ' * 30, 'answers': ['Ann'],
                     'length': 60}],
    'multifieldqa_zh': [{'input': '谁？', 'context': '小明在北京。' * 10, 'answers': ['小明'],
                         'length': 60}],
    'gov_report': [{'input': '', 'context': 'The agency spent money. ' * 20,
                    'answers': ['The agency spent money.'], 'length': 5000}],
    'vcsum': [{'input': '', 'context': '会议讨论了预算。' * 10, 'answers': ['会议讨论了预算。'],
               'length': 9000}],
    'trec': [{'input': 'Question: Where is Paris?\nType:', 'context': 'Question: Who? Type: Human',
              'answers': ['Location'], 'all_classes': ['Human', 'Location', 'Entity'],
              'length': 100}],
    'samsum': [{'input': 'Dialogue: A: hi\nSummary:', 'context': 'Dialogue: B: yo\nSummary: B greets.',
                'answers': ['A greets.'], 'length': 100}],
    'passage_count': [{'input': '', 'context': 'Paragraph 1: x\nParagraph 2: y', 'answers': ['2'],
                       'length': 100}],
    'passage_retrieval_en': [{'input': 'abstract', 'context': 'Paragraph 1: a\nParagraph 2: b',
                              'answers': ['Paragraph 2'], 'length': 100}],
    'passage_retrieval_zh': [{'input': '摘要', 'context': '段落1：甲\n段落2：乙', 'answers': ['段落1'],
                              'length': 100}],
    'lcc': [{'input': '', 'context': 'def f(x):\n  return x\n', 'answers': ['y = f(3)'],
             'length': 100}],
}


def data_dir(tmp_path, suffix=''):
  folder = tmp_path / 'LongBench'
  folder.mkdir(exist_ok=True)
  for name, rows in SAMPLES.items():
    rows = rows + [dict(rows[0], _id=f'{name}-2')]
    (folder / f'{name}{suffix}.jsonl').write_text(
        '\n'.join(json.dumps(r, ensure_ascii=False) for r in rows))
  return str(folder)


def test_middle_truncation_keeps_the_first_and_last_halves():
  assert longbench.truncate_middle('abcdefghij', BYTES, 4) == 'abij'
  assert longbench.truncate_middle('abc', BYTES, 4) == 'abc'
  assert longbench.truncate_middle('abcdefghij', BYTES, 5) == 'abij'  # int(5 / 2) = 2 each side


def test_prompts_templates_and_chat():
  cfg = longbench.LongBenchConfig(protocol='lladax', max_length=10000, chat_template=True)
  sample = SAMPLES['narrativeqa'][0]
  prompt = longbench.build_prompt('narrativeqa', sample, longbench.PROMPTS['narrativeqa'], BYTES,
                                  cfg)
  assert prompt.startswith('<|start_header_id|>user<|end_header_id|>\n\nYou are given a story')
  assert prompt.endswith('Question: Who sails?\n\nAnswer:<|eot_id|><|start_header_id|>assistant'
                         '<|end_header_id|>\n\n')
  plain = longbench.build_prompt('trec', SAMPLES['trec'][0], longbench.PROMPTS['trec'], BYTES,
                                 cfg)
  assert plain.startswith('Please determine the type')  # no chat template for few-shot sets
  assert set(longbench.PROMPTS) == set(longbench.MAX_NEW_TOKENS) == set(longbench.METRIC)
  assert longbench.MAX_NEW_TOKENS['gov_report'] == 512 and longbench.MAX_NEW_TOKENS['musique'] == 32


def test_first_line_and_newline_stop():
  assert longbench.postprocess('samsum', 'A greets.\nB leaves.') == 'A greets.'
  assert longbench.postprocess('trec', '\n\nLocation\nmore') == 'Location'
  assert longbench.postprocess('gov_report', 'a\nb') == 'a\nb'
  assert longbench.score('trec', '\nLocation\nHuman', SAMPLES['trec'][0]) == 1.0


def test_gold_answers_score_100_on_every_metric(tmp_path):
  c = recipe('eval_longbench', tmp_path, longbench=dict(data_dir=data_dir(tmp_path),
                                                        protocol='lladax'))
  c.eval.oracle = True
  result = jobs.run(c)
  assert {d: v['score'] for d, v in result['datasets'].items()} == {d: 100.0 for d in SAMPLES}
  assert result['avg'] == 100 and result['weighted_avg'] == 100
  assert set(result['groups']) == {'single_doc_qa', 'summarization', 'few_shot', 'synthetic',
                                   'code'}
  assert result['sampler']['gov_report']['gen_length'] == 512
  assert result['sampler']['gov_report']['steps'] == 512
  assert result['sampler']['passage_count'] == dict(result['sampler']['passage_count'],
                                                    gen_length=64, steps=64)


def test_summary_groups_and_question_weighting():
  rows = ([dict(dataset='hotpotqa', score=1.0, length=10)] * 3
          + [dict(dataset='lcc', score=0.0, length=5000)])
  s = longbench.summarise(rows, ['hotpotqa', 'lcc'], longbench_e=True)
  assert s['avg'] == 50 and s['weighted_avg'] == 75
  assert s['groups'] == {'multi_doc_qa': 100, 'code': 0}
  assert s['datasets']['lcc']['buckets']['4-8k'] == 0


def test_longbench_e_reads_the_e_files(tmp_path):
  c = recipe('eval_longbench', tmp_path, longbench=dict(data_dir=data_dir(tmp_path, '_e'),
                                                        longbench_e=True, protocol='lladax',
                                                        datasets=('gov_report', 'vcsum')))
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['datasets']['gov_report']['buckets']['4-8k'] == 100
  assert result['datasets']['vcsum']['buckets']['8k+'] == 100


def test_tiny_checkpoint_run_truncates_long_prompts(tmp_path, tiny_checkpoint):
  c = recipe('eval_longbench', tmp_path, longbench=dict(
      data_dir=data_dir(tmp_path), datasets=('narrativeqa', 'passage_count'), max_length=200,
      block_length=32, steps=8, protocol='lladax'))
  c.checkpoint = tiny_checkpoint
  c.eval.batch_size = 2
  result = jobs.run(c)
  assert set(result['datasets']) == {'narrativeqa', 'passage_count'}
  assert all(0 <= r['score'] <= 1 for r in result['cells'])
  assert result['sampler']['narrativeqa']['gen_length'] == 128


def test_bad_settings_are_one_sentence(tmp_path):
  with pytest.raises(ConfigError, match="'hotpot', not a LongBench dataset"):
    longbench.LongBenchConfig(datasets=('hotpot',))
  c = recipe('eval_longbench', tmp_path, longbench=dict(data_dir=str(tmp_path / 'none')))
  with pytest.raises(ConfigError, match='is not a folder'):
    jobs.run(c)
  c.longbench.update(data_dir=data_dir(tmp_path), datasets=('musique',))
  with pytest.raises(ConfigError, match='musique.jsonl does not exist'):
    jobs.run(c)
