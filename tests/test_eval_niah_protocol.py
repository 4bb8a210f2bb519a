"""NIAH under the papers' protocol (NeedleBench "origin" as LongLLaDA / UltraLLaDA patched it),
against tests/golden/data/niah.json, which tests/golden/niah_record.py made by running the
official origin.py, prompt template, evaluator, summarizer and configs on the inputs of
tests/golden/niah_inputs.py: prompts character for character, answers, scores and the Overall
exactly, the grids as the official configs set them; then the eval_niah job end to end."""
import hashlib
import json
import random

import pytest
from golden import niah_inputs, record

from lladax import jobs
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import model_calls, niah, oracles
from tests.test_eval_common import recipe, tiny_checkpoint  # noqa: F401 (fixture)

pytest.importorskip('tiktoken')

PAPERS = ('longllada', 'ultrallada')


@pytest.fixture(scope='module')
def golden():
  return record.load('niah')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  return niah_inputs.write(str(tmp_path_factory.mktemp('needlebench')))


def settings(files, protocol='longllada', **overrides):
  grid = niah_inputs.GRIDS[protocol]
  values = dict(protocol=protocol, grid='custom', lengths=grid['lengths'],
                depths=tuple(float(d) for d in grid['depths']), repeats=grid['repeats'],
                haystack=files['haystack'], needles=files['needles'],
                count_tokenizer=files['bpe'])
  values.update(overrides)
  return values


def builder(files, protocol='longllada', **overrides):
  return niah.load_origin(niah.NiahConfig(**settings(files, protocol, **overrides)))[0]


def sha(text):
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def test_the_goldens_were_recorded_on_these_inputs(golden, files):
  for name, path in files.items():
    with open(path, encoding='utf-8') as f:
      assert sha(f.read()) == golden['inputs'][name], f'{name}: rerun tests/golden/record.py'


@pytest.mark.parametrize('protocol', PAPERS)
def test_prompts_and_answers_are_the_official_ones_character_for_character(golden, files,
                                                                           protocol):
  b = builder(files, protocol)
  recorded = golden[protocol]['cells']
  assert len(recorded) == len(niah_inputs.GRIDS[protocol]['lengths']) * len(
      niah_inputs.GRIDS[protocol]['depths']) * niah_inputs.GRIDS[protocol]['repeats']
  for rec in recorded:
    # OpenCompass' template ({prompt} as the only HUMAN turn) hands the dataset's prompt over as
    # is (no BOS text, no answer turn), except that filling it deletes a literal '{answer}'.
    assert rec['template_is_identity'] or rec['answer_field_in_dataset_prompt']
    cell = b.cell(rec['length'], float(rec['depth']), rec['repeat'])
    where = (rec['length'], rec['depth'], rec['repeat'])
    assert cell['reference'] == rec['answer'], where
    if 'prompt' in rec:
      assert cell['prompt'] == rec['prompt'], where
    assert cell['prompt'][-400:] == rec['tail'], where
    assert (len(cell['prompt']), sha(cell['prompt'])) == (rec['chars'], rec['sha256']), where


def test_the_goldens_cover_cuts_and_insertions_inside_characters_and_a_short_corpus(golden,
                                                                                     files):
  cells = golden['longllada']['cells'] + golden['ultrallada']['cells']
  # ... and prompts whose haystack held '{answer}', which the template filling deletes.
  assert any(c['answer_field_in_dataset_prompt'] for c in cells)
  needle_split = [c for c in cells if c['depth'] < 100 and c['around_needle'].startswith(
      '\ufffd', 5) and c['around_needle'][-6:].startswith('\ufffd')]
  cut_split = [c for c in cells if c['tail'].split(niah.PAPER_ASK)[0].endswith('\ufffd')]
  assert needle_split and cut_split
  b = builder(files)
  longest = max(niah_inputs.GRIDS['longllada']['lengths'])
  cell = b.cell(longest, 50.0, 0)
  assert cell['haystack_tokens'] < longest - niah.PAPER_LENGTH_BUFFER - 30  # every document
  assert any(c['prompt'].endswith(' was') for c in golden['longllada']['cells'] if 'prompt' in c)
  assert any(c['prompt'].endswith(' is') for c in golden['longllada']['cells'] if 'prompt' in c)


def test_the_prompt_has_the_papers_shape(files):
  cell = builder(files).cell(700, 50.0, 1)
  prompt = cell['prompt']
  assert prompt.startswith('You are an intelligent AI assistant skilled in answering user '
                           'questions.\nPlease keep your answers concise and clear.')
  assert '\nThe document given to you by the user is ' in prompt
  assert 'Answer from the document by completing this sentence' not in prompt
  assert 'Please answer in the format' not in prompt and not prompt.endswith('_')
  assert ('? Before answering, please consider what in the document is most relevant to this '
          'question. The ') in prompt
  assert cell['context_tokens'] == 700 - 600


@pytest.mark.parametrize('protocol', PAPERS)
def test_scores_are_the_official_evaluators(golden, protocol):
  recorded = golden[protocol]['evaluator']
  scores = [niah.paper_score(p, niah.paper_reference(n, k))
            for p, n, k in niah_inputs.PREDICTIONS]
  assert scores == recorded['scores']
  assert niah.paper_mean(scores) == recorded['average']
  assert {100, 0.0} < set(scores)  # found, nothing alike, and partial credit between


@pytest.mark.parametrize('protocol', PAPERS)
def test_per_length_and_overall_are_the_papers_summarizers(golden, protocol):
  recorded = golden[protocol]['summary']
  rows = []
  for cell in recorded['cells']:
    for r, i in enumerate(cell['predictions']):
      p, n, k = niah_inputs.PREDICTIONS[i]
      rows.append(dict(length=cell['length'], depth=float(cell['depth']), repeat=r,
                       score=niah.paper_score(p, niah.paper_reference(n, k))))
  lengths = list(niah_inputs.SUMMARY_LENGTHS)
  depths = [float(d) for d in niah_inputs.SUMMARY_DEPTHS]
  summary = niah.paper_summary(rows, lengths, depths)
  assert [c['score'] for c in recorded['cells']] == [v for row in summary['grid']['score']
                                                     for v in row]
  assert list(summary['by_length'].values()) == recorded['by_length']
  assert summary['overall'] == recorded['overall']


def test_the_grids_are_the_official_configs(golden):
  for protocol, entry in (('longllada', 'llada_8b_base-o32_b32_s32'),
                          ('ultrallada', 'llada_8b_base-o32_b32_s16')):
    official = golden[protocol]['settings']
    cfg = niah.NiahConfig(protocol=protocol)
    assert cfg.grid_name == protocol
    assert sorted(cfg.resolved('lengths')) == official['lengths']
    assert list(cfg.resolved('depths')) == official['depths']
    assert cfg.resolved('repeats') == official['num_repeats_per_file'] == 10
    assert official['length_buffer'] == niah.PAPER_LENGTH_BUFFER == cfg.length_buffer
    assert official['language'] == niah.PAPER_LANGUAGE == cfg.language
    assert official['guide'] is True and official['use_trim'] is False
    assert official['file_list'] == ['en_un_asr.jsonl']
    assert official['needle_file_name'] == 'needles.jsonl'
    assert official['tokenizer_model'] == 'gpt-4'  # cl100k_base
    models = {m[0]: m for m in golden[protocol]['models']}
    _, _, diffusion, max_out_len = models[entry]
    assert diffusion['steps'] == cfg.resolved('steps')
    assert diffusion['block_length'] == cfg.block_length == niah.PAPER_BLOCK_LENGTH
    assert max_out_len == cfg.gen_length == niah.PAPER_GEN_LENGTH
  assert niah.NiahConfig(protocol='lladax').grid_name == 'longllada'


def test_custom_lengths_keep_the_rest_of_the_papers_grid():
  ultra = niah.NiahConfig(protocol='ultrallada', grid='custom', lengths=(1000,))
  assert ultra.resolved('steps') == 16 and ultra.resolved('repeats') == 10
  assert ultra.resolved('depths') == niah.GRIDS['ultrallada']['depths']
  own = niah.NiahConfig(protocol='lladax', grid='custom', lengths=(1000,))
  assert own.resolved('repeats') == 1 and own.resolved('steps') == 0  # as before


def test_draws_leave_pythons_global_random_alone(files):
  state = random.getstate()
  b = builder(files)
  b.cell(900, 30.0, 3)
  assert random.getstate() == state
  # Orders build on each other: repeat 1's is repeat 0's shuffled again.
  assert b.order(1) != b.order(0) and sorted(b.order(1)) == sorted(b.order(0))


def test_a_cell_does_not_tokenize_the_corpus_again(files):
  b = builder(files, 'ultrallada')
  calls = []
  real = b.encoder.encode_refusing_special
  b.encoder.encode_refusing_special = lambda text: calls.append(len(text)) or real(text)
  b.prepare(5120, 4)
  assert len(calls) == niah_inputs.N_DOCUMENTS + len({b.needle(r) for r in range(4)})
  calls.clear()
  for length in (1024, 2048, 5120):
    for depth in (0.0, 50.0, 100.0):
      for r in range(4):
        b.cell(length, depth, r)
  assert not calls


def test_a_special_token_in_the_haystack_is_refused_as_officially(golden, tmp_path):
  assert golden['longllada']['special_token']['error'] == 'ValueError'
  assert '<|endoftext|>' in golden['longllada']['special_token']['message']
  special = niah_inputs.write(str(tmp_path), special=True)
  with pytest.raises(ConfigError, match=r'en_un_asr.jsonl line 4 holds a special token'):
    builder(special).prepare(5200, 2)


def test_an_empty_haystack_still_reads_its_first_document_as_officially(files):
  """The official loop adds a document before it compares the count, so even a cut to 0 tokens
  tokenizes (and may refuse) the first document of the order, and only that one."""
  b = builder(files)
  first, second = b.order(0)[:2]
  b.records = [dict(r) for r in b.records]
  b.records[second]['text'] = 'a <|endoftext|> b'
  assert b.cell(601, 50.0, 0)['haystack_tokens'] == 0
  b.records[first]['text'] = 'a <|endoftext|> b'
  b._doc_tokens.clear()  # pylint: disable=protected-access
  b._streams.clear()  # pylint: disable=protected-access
  with pytest.raises(ConfigError, match=f'line {first + 1} holds a special token'):
    b.cell(601, 50.0, 0)


def test_a_cut_off_haystack_line_is_refused_not_skipped(files, tmp_path):
  """Skipping it would move every later document in the shuffles; the official code fails."""
  path = tmp_path / 'en_un_asr.jsonl'
  with open(files['haystack'], encoding='utf-8') as f:
    path.write_text(f.read() + '{"title": "", "text": "The last line was cut')
  with pytest.raises(ConfigError, match=f'line {niah_inputs.N_DOCUMENTS + 1} is not a JSON'):
    builder(files, haystack=str(path))


def test_needle_questions_without_the_format_instruction_are_refused(files, tmp_path):
  path = tmp_path / 'needles.jsonl'
  path.write_text(json.dumps({'needle': 'A.', 'retrieval_question': 'What?', 'arg2': 'A',
                              'language': 'English'}) + '\n')
  with pytest.raises(ConfigError, match=r'needles.jsonl line 1: its retrieval_question lacks'):
    builder(files, needles=str(path)).cell(700, 0.0, 0)


@pytest.mark.parametrize('setting, value, message', [
    ('haystack', '', 'config.niah.haystack is empty'),
    ('haystack', '/nope/en_un_asr.jsonl', "config.niah.haystack='/nope/en_un_asr.jsonl' is not"),
    ('needles', '', 'config.niah.needles is empty'),
    ('needles', '/nope/needles.jsonl', "config.niah.needles='/nope/needles.jsonl' is not"),
    ('count_tokenizer', '', 'config.niah.count_tokenizer is empty'),
    ('count_tokenizer', '/nope/cl100k_base.tiktoken', 'config.niah.count_tokenizer=.* is not a'),
])
def test_a_missing_paper_file_names_its_setting(files, setting, value, message):
  with pytest.raises(ConfigError, match=message):
    builder(files, **{setting: value})


@pytest.mark.parametrize('overrides, message', [
    (dict(template='{context}|{stem}'), 'config.niah.template applies to protocol lladax only'),
    (dict(seed=3), 'config.niah.seed applies to protocol lladax only'),
    (dict(language='Chinese'), 'English only'),
    (dict(depths=(12.5,)), 'whole percentages'),
    (dict(protocol='gkamradt'), "config.niah.protocol='gkamradt' is not one of"),
])
def test_settings_the_papers_fix_are_refused(overrides, message):
  with pytest.raises(ConfigError, match=message):
    niah.NiahConfig(**overrides)


def paper_recipe(tmp_path, files, **overrides):
  values = dict(settings(files), lengths=(700, 900), depths=(0.0, 100.0), repeats=2)
  values.update(overrides)
  return recipe('eval_niah', tmp_path, niah=values)


def test_the_oracle_scores_100_through_the_job_and_deviations_are_recorded(tmp_path, files):
  c = paper_recipe(tmp_path, files)
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['overall'] == 100 and result['grid']['score'] == [[100, 100]] * 2
  assert result['protocol'] == 'longllada' and result['grid_preset'] == 'custom'
  assert result['generation']['prompt_tokens'] == 'tokenizer'
  assert result['sampler']['mask_prediction'] == 'allow' and result['sampler']['steps'] == 32
  assert 'overall_exact' not in result and 'exact' not in result['cells'][0]
  deviations = ' | '.join(result['deviations'])
  assert 'dtype=float32 (protocol longllada: float16)' in deviations
  assert 'config.niah.lengths=[700, 900] (protocol longllada: [2000' in deviations
  assert 'config.niah.repeats=2 (protocol longllada: 10)' in deviations
  # The tests count in a small BPE, not cl100k_base: every length then differs from the papers'.
  assert 'config.niah.count_tokenizer=' in deviations and 'is not cl100k_base' in deviations
  assert all(r['context_tokens'] == r['length'] - 600 for r in result['cells'])
  saved = json.loads((tmp_path / 'niah_results.json').read_text())
  assert saved['deviations'] == result['deviations'] and saved['protocol'] == 'longllada'


def test_a_sampler_setting_other_than_the_papers_is_a_deviation(tmp_path, files):
  c = paper_recipe(tmp_path, files, lengths=(700,), repeats=1)
  c.eval.oracle = True
  c.sample.temperature = 0.5
  deviations = ' | '.join(jobs.run(c)['deviations'])
  assert 'config.sample.temperature=0.5 (protocol longllada: 0.0)' in deviations


def test_a_run_given_more_lengths_and_repeats_reuses_its_finished_cells(tmp_path, files):
  prompts = []
  oracle = oracles.niah(niah.load_origin(niah.NiahConfig(**settings(files)))[0].oracle_needles())

  def counting(prompt):
    prompts.append(prompt)
    return oracle.solve(prompt)

  c = paper_recipe(tmp_path, files, lengths=(700,), repeats=1)
  niah.run(c, generator=oracles.Oracle(counting))
  first = len(prompts)
  c = paper_recipe(tmp_path, files, lengths=(700, 900), repeats=2)
  result = niah.run(c, generator=oracles.Oracle(counting))
  assert first == 2 and len(prompts) - first == 2 * 2 * 2 - first
  assert result['overall'] == 100


def test_outputs_without_the_keyword_score_as_the_evaluator_does(tmp_path, files):
  c = paper_recipe(tmp_path, files, lengths=(700,), repeats=1)
  c.eval.resume = False
  assert niah.run(c, generator=oracles.Oracle(lambda p: ''))['overall'] == 0.0
  result = niah.run(c, generator=oracles.Oracle(lambda p: ' the Moon.'))
  assert 0 < result['overall'] < 20
  assert result['cells'][0]['score'] == niah.paper_score(
      ' the Moon.', niah.paper_reference(*_drawn_needle(files, 0)))


def _drawn_needle(files, repeat):
  b = builder(files)
  n = b.needles[b.needle(repeat)]
  return n['needle'], n['arg2']


def test_the_tiny_checkpoint_gets_prompt_tokens_without_bos(tmp_path, files, tiny_checkpoint,
                                                           monkeypatch):
  c = paper_recipe(tmp_path, files, lengths=(700,), depths=(0.0, 100.0), repeats=1)
  c.checkpoint = tiny_checkpoint
  c.eval.batch_size = 2
  seen = []
  real = model_calls.ModelGenerator.generate_ids

  def spy(self, prompt_ids, cfg, seed=0, keep=None):
    seen.extend(list(p) for p in prompt_ids)
    assert cfg.mask_prediction == 'allow' and cfg.gen_length == 32 and cfg.steps == 32
    return real(self, prompt_ids, cfg, seed, keep)

  monkeypatch.setattr(model_calls.ModelGenerator, 'generate_ids', spy)
  result = jobs.run(c)
  assert len(seen) == 2
  byte = tokenizers.ByteTokenizer()
  for ids, cell in zip(seen, result['cells']):
    assert ids[0] != byte.BOS and ids[0] == ord('Y')  # "You are ..." with nothing before it
    assert len(ids) == cell['prompt_tokens']
  assert result['protocol'] == 'longllada' and result['deviations']
  assert result['model']['dtype'] == 'float32' and result['generation']['decode'] == 'skip_special'
  assert all(0 <= r['score'] <= 100 for r in result['cells'])
