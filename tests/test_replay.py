"""The miniature replay (configs/mini): its data, its report, and the recipe shrunk to seconds."""
import json
import math
import re

import numpy as np
import pytest
from helpers import repo_module, run_lladax

from lladax import rope
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import niah
from lladax.replay import corpus, probe, report, run, stages
from lladax.replay.settings import ReplayConfig

TOK = tokenizers.ByteTokenizer()


@pytest.fixture(scope='module')
def prose():
  return corpus.prose(limit=60)


def test_held_out_prose_is_never_trained_on(prose):
  assert prose.train and prose.held_out
  assert not set(prose.train) & set(prose.held_out)
  assert corpus.prose(limit=60) == prose   # the split is a hash of names, not a random draw


def test_retrieval_documents_hold_one_needle_and_end_with_its_answer(prose):
  needles = corpus.needles(0, 50, 4)
  docs = corpus.retrieval_documents(prose.train, needles, TOK, count=40, min_length=112,
                                    max_length=300, length_buffer=96, seed=3)
  tail = re.compile(r'\nWhat is the secret code of the (\w+)\? The secret code of the \1 is '
                    r'(\d{4})\.$')
  for doc in docs:
    found = tail.search(doc)
    assert found, doc[-120:]
    key, value = found.groups()
    assert doc.count(f'The secret code of the {key} is {value}.') == 2   # needle + answer
    assert doc.count('secret code of the') == 3     # needle, question, answer: no other needle
    # With BOS and EOS the document still fits its row: first-fit packing never cuts it.
    assert len(TOK.encode(doc)) + 2 <= 300


def test_retrieval_needles_sit_at_every_depth(prose):
  needles = corpus.needles(1, 50, 4)
  docs = corpus.retrieval_documents(prose.train, needles, TOK, count=60, min_length=250,
                                    max_length=300, length_buffer=96, seed=0)
  where = []
  for doc in docs:
    start = doc.index('The secret code of the')
    end = doc.index('\n', start)
    after = doc.rindex('\nWhat is') - end    # haystack between the needle and the question
    where.append(start / (start + after))
  assert min(where) < 0.1 and max(where) > 0.9


def test_prose_chunks_fit_one_row_and_cut_between_words(prose):
  chunks = corpus.prose_chunks(prose.train, TOK, count=50, longest=100, seed=0)
  assert len(chunks) == 50
  for chunk in chunks:
    assert 0 < len(TOK.encode(chunk)) <= 98   # BOS and EOS fill the row
    doc = next(d for d in prose.train if chunk in d)
    at = doc.index(chunk)
    assert at == 0 or doc[at - 1] == ' '
    assert at + len(chunk) == len(doc) or doc[at + len(chunk)] == ' '
  assert corpus.prose_chunks(prose.train, TOK, count=50, longest=100, seed=0) == chunks


def test_a_question_budget_too_small_for_the_longest_key_is_refused(prose):
  with pytest.raises(ConfigError, match='length_buffer=40 is less than'):
    corpus.retrieval_documents(prose.train, corpus.needles(0, 50, 4), TOK, count=1,
                               min_length=64, max_length=128, length_buffer=40, seed=0)


@pytest.mark.parametrize('kwargs,message', [
    (dict(strategies=('pack',)), "config.replay.strategies='pack' is not one of"),
    (dict(training_free=('yarn',)), "config.replay.training_free='yarn' is not one of"),
    (dict(multiples=(0, 2)), 'whole multiples of T'),
    (dict(post_multiple=1), 'at least 2'),
    (dict(train_length=100), 'leaves no haystack'),
    (dict(niah_repeats=0), 'niah_repeats=0 must be positive'),
    (dict(instruct_longest=300), 'instruct_longest=300 must be 0 (= T) or between'),
    (dict(instruct_longest=100), 'length_buffer + 17 = 113'),
    (dict(instruct_long_steps=-1), 'instruct_long_steps=-1 must be 0 (none) or positive'),
])
def test_bad_replay_settings_are_named(kwargs, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    ReplayConfig(**kwargs)


def _cell(length, depth, exact, prompt=None, context=None):
  context = length - 100 if context is None else context
  return dict(length=length, depth=depth, repeat=0, exact=exact, score=exact,
              prompt_tokens=prompt or length, context_tokens=context)


def test_near_and_far_split_at_the_trained_distance():
  # At 1024 tokens with T = 256, a needle at depth 80% of 924 context tokens lies
  # 1024 - 739.2 = 284.8 tokens from the answer (far); at 90%, 192.4 (near).
  assert report.needle_distance(_cell(1024, 80.0, 0.0)) == pytest.approx(284.8)
  result = {'lengths': [1024], 'depths': [80.0, 90.0], 'grid': {'exact': [[0.0, 100.0]]},
            'cells': [_cell(1024, 80.0, 0.0), _cell(1024, 90.0, 100.0)]}
  got = report.niah_summary(result, 256)
  assert got['near'] == {'1024': 100.0} and got['far'] == {'1024': 0.0}
  assert got['exact'] == {'1024': 50.0}


def _evaluated(name, strategy, seed, exact, ppl):
  variant = stages.Variant(name, f'/m/{name}', 'none', strategy, seed)
  niah_result = {'rope': {'base': 1e5}, 'lengths': [256], 'depths': [0.0],
                 'grid': {'exact': [[exact]]}, 'cells': [_cell(256, 0.0, exact)]}
  ppl_result = {'perplexity': {'longllada': {'256': ppl}},
                'curves': {'longllada': {'positions': [256], 'perplexity': [ppl]}}}
  return variant, niah_result, ppl_result


def test_strategies_are_averaged_over_seeds_with_their_spread():
  rcfg = ReplayConfig(multiples=(1,), strategies=('segment', 'concat'))
  evaluated = {'post_segment_seed0': _evaluated('post_segment_seed0', 'segment', 0, 100.0, 3.0),
               'post_segment_seed1': _evaluated('post_segment_seed1', 'segment', 1, 80.0, 5.0),
               'post_concat_seed0': _evaluated('post_concat_seed0', 'concat', 0, 40.0, 4.0)}
  summary = report.summarise(rcfg, evaluated)
  got = summary['strategies']
  assert got['segment']['exact']['256']['mean'] == 90.0
  assert got['segment']['exact']['256']['std'] == pytest.approx(math.sqrt(200.0))
  assert got['segment']['ppl']['256']['runs'] == [3.0, 5.0]
  assert got['segment']['grid_exact'] == [[90.0]]
  assert got['concat']['exact']['256']['std'] == 0.0 and got['concat']['seeds'] == [0]
  rows = report.markdown_table(dict(summary, lengths=[256], train_length=256,
                                    post_length=1024)).splitlines()
  assert rows[2] == ('| post-trained at 4T, segment (seeds 0, 1) | 1e+05 | 90 ± 14 | '
                     '4.00 ± 1.41 |')
  assert rows[3] == '| post-trained at 4T, concat (seeds 0) | 1e+05 | 40 | 4.00 |'


def lladax(*args, check=True):
  return run_lladax(*args, check=check, timeout=900)


def test_an_sft_setting_changes_only_the_stage_that_reads_it():
  recipe = repo_module('configs', 'mini', 'ultra.py')
  files = dict(prose='p', retrieval_pre='r', retrieval_post='q', retrieval_sft='s')

  def settings(sft_padding):
    config = recipe.get_config()
    config.data.sft_padding = sft_padding
    rcfg = ReplayConfig()
    return [run._stage_settings(c) for c in (
        stages.pretrain(config, rcfg, files, '/w'),
        stages.posttrain(config, rcfg, files, '/w', '/w/base', 'eod', 0),
        stages.instruct(config, rcfg, files, '/w', '/w/base'))]

  (pre_a, post_a, sft_a), (pre_b, post_b, sft_b) = settings('answer'), settings('ignored')
  # A finished pre-training or post-training folder stays valid; the instruct stage is new.
  assert pre_a == pre_b and post_a == post_b and sft_a != sft_b
  assert pre_a['data']['seq_len'] == 256 and post_a['data']['seq_len'] == 1024


@pytest.mark.parametrize('long', [False, True])
def test_each_instruct_phase_reads_its_records_and_decays_its_learning_rate(prose, long):
  from lladax.train import optimizer  # pylint: disable=import-outside-toplevel
  recipe = repo_module('configs', 'mini', 'ultra.py').get_config()
  rcfg = ReplayConfig(**recipe.replay.to_dict())
  files = dict(retrieval_sft='short.jsonl', retrieval_sft_long='long.jsonl')
  c = stages.instruct(recipe, rcfg, files, '/w', '/w/base', long)
  width, path, steps, peak = ((256, 'long.jsonl', rcfg.instruct_long_steps,
                               rcfg.instruct_long_learning_rate) if long else
                              (160, 'short.jsonl', rcfg.instruct_steps,
                               rcfg.instruct_learning_rate))
  assert (c.data.source, c.data.path, c.data.seq_len, c.data.sft_padding) == (
      'sft_jsonl', path, width, 'ignored')
  assert c.train.steps == steps > 0 and c.checkpoint == '/w/base'
  assert c.workdir == ('/w/instruct_long' if long else '/w/instruct')
  schedule = optimizer.learning_rate(optimizer.OptimConfig(**c.optim.to_dict()))
  lrs = [float(schedule(i)) for i in range(c.train.steps + 1)]
  assert max(lrs) == pytest.approx(peak)
  assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[-1] < lrs[len(lrs) // 2] < max(lrs)
  # Every record the corpus writes for the phase fits its rows with BOS and EOS.
  records = corpus.retrieval_records(prose.train, corpus.needles(0, 50, rcfg.value_digits), TOK,
                                     count=40, min_length=rcfg.length_buffer + 16,
                                     max_length=width, length_buffer=rcfg.length_buffer, seed=0)
  assert max(len(TOK.encode(p + a)) + 2 for p, a in records) <= c.data.seq_len


def test_a_train_stage_stopped_early_is_not_done_and_stops_the_replay(tmp_path, monkeypatch):
  """On SIGTERM the train job saves a checkpoint and returns without a model; a later stage must
  not start from it, and a rerun must resume the stage rather than skip it."""
  config = repo_module('configs', 'mini', 'smoke.py').get_config()
  config.job, config.workdir = 'train', str(tmp_path / 'stage')
  monkeypatch.setattr(run.jobs, 'run',
                      lambda c: {'model_dir': None, 'history': [], 'stopped_early': True})
  with pytest.raises(SystemExit) as stopped:
    run._run_stage(config)
  assert stopped.value.code == 143
  assert not json.loads((tmp_path / 'stage' / 'replay_train.json').read_text())['done']
  monkeypatch.setattr(run.jobs, 'run',
                      lambda c: {'model_dir': '/m', 'history': [1], 'stopped_early': False})
  assert run._run_stage(config)[0] == {'model_dir': '/m', 'history': [1]}
  assert json.loads((tmp_path / 'stage' / 'replay_train.json').read_text())['done']


def _oracle(truth_rows, vocab=300, wrong=False):
  """logits_fn that knows every row's true tokens (rows padded with 0, as the probe pads them);
  wrong=True puts its mass on the next token id instead."""
  width = max(len(r) for r in truth_rows)
  truth = np.zeros((len(truth_rows), width), np.int32)
  for i, r in enumerate(truth_rows):
    truth[i, :len(r)] = r
  def logits_fn(tokens, positions, segments):
    assert tokens.shape == truth.shape and (np.asarray(segments)[truth == 0] == 0).all()
    return np.eye(vocab)[(truth + wrong) % vocab]
  return logits_fn


def test_the_niah_value_is_decoded_with_room_for_its_period_and_eos():
  """A network trained on documents that end with EOS predicts EOS in a row's last slot. Under the
  replay's NIAH settings that slot is not the value's, so such a network still scores."""
  import jax
  import jax.numpy as jnp

  from lladax import sampler
  from lladax.evals import metrics
  grid = stages.niah_grid(ReplayConfig(value_digits=1), {'haystack': 'h', 'needles': 'n'})
  cfg = sampler.SamplerConfig(gen_length=grid.gen_length, block_length=grid.block_length,
                              steps=grid.resolved('steps'))
  prompt = jnp.asarray([[TOK.BOS] + TOK.encode('The secret code of the lantern is 7.\nWhat is '
                                                'the secret code of the lantern? The secret '
                                                'code of the lantern is ')])
  digits = jnp.asarray([TOK.encode(str(d))[0] for d in range(10)])

  def ends_documents_with_eos(tokens, positions, segment_ids, start):
    at = start + jnp.arange(cfg.block_length)
    after_digit = jnp.isin(tokens[:, at - 1], digits)
    want = jnp.where(at == tokens.shape[1] - 1, TOK.EOS,
                     jnp.where(after_digit, TOK.encode('.')[0], TOK.encode('7')[0]))
    return jax.nn.one_hot(want, TOK.vocab_size) * 5.0

  out = sampler.sample(ends_documents_with_eos, prompt, jax.random.key(0), cfg, mask_id=TOK.MASK)
  answer = TOK.decode(sampler.strip_generation(out[0, prompt.shape[1]:], (TOK.EOS,)))
  assert metrics.exact_match(answer, '7') == 100.0


def test_probe_scores_the_masked_tokens_only():
  rows = [[257, 5, 6, 7, 8], [257, 9, 10]]
  masks = [np.array([0, 0, 1, 1, 0], bool), np.array([0, 1, 0], bool)]
  right = probe.masked_predictions(_oracle(rows), rows, masks, mask_id=258, batch_size=8)
  assert [list(h) for h in right] == [[6, 7], [9]]
  wrong = probe.masked_predictions(_oracle(rows, wrong=True), rows, masks, 258, batch_size=8)
  assert [list(h) for h in wrong] == [[7, 8], [10]]


def test_left_to_right_predictions_show_the_earlier_masked_tokens():
  rows = [[257, 1, 4, 8, 2, 6], [257, 1, 3, 5]]
  masks = [np.array([0, 0, 1, 1, 1, 0], bool), np.array([0, 0, 1, 1], bool)]

  def left_neighbour(tokens, positions, segments):
    """Predicts every position's left neighbour, or token 0 where that neighbour is masked."""
    tokens = np.asarray(tokens)
    left = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], 1)
    return np.eye(300)[np.where(left == 258, 0, left)]

  at_once = probe.masked_predictions(left_neighbour, rows, masks, 258)
  assert [list(g) for g in at_once] == [[1, 0, 0], [1, 0]]
  in_order = probe.left_to_right_predictions(left_neighbour, rows, masks, 258)
  assert [list(g) for g in in_order] == [[1, 4, 8], [1, 3]]


def test_retrieval_scores_tell_a_found_needle_from_ordered_digits():
  digits = [ord(c) for c in '4821'], [ord(c) for c in '3395']
  rows = [[257, 1, 2] + d + [ord('.')] for d in digits]
  masks = [np.array([0, 0, 0, 1, 1, 1, 1, 0], bool)] * 2
  exact = probe.retrieval_scores([np.array(d) for d in digits], rows, masks)
  assert exact['retrieval_digit_accuracy'] == exact['retrieval_exact'] == 1.0
  assert exact['retrieval_from_value'] == 1.0 and exact['retrieval_prompts'] == 2
  assert exact['retrieval_value_tokens'] == 4
  # '4821' has 4 distinct digits and '3395' 3: a uniform guess lands in the value 35% of the time.
  assert exact['retrieval_from_value_chance'] == pytest.approx((4 * 0.4 + 4 * 0.3) / 8)
  # The needle's digits in the wrong slots: found, not ordered.
  shuffled = probe.retrieval_scores([np.roll(d, 1) for d in digits], rows, masks)
  assert shuffled['retrieval_exact'] == 0.0 and shuffled['retrieval_from_value'] == 1.0
  assert shuffled['retrieval_digit_accuracy'] == pytest.approx(1 / 8)   # 3395 -> 5339: one 3
  constant = probe.retrieval_scores([np.full(4, ord('7'))] * 2, rows, masks)
  assert constant['retrieval_from_value'] == constant['retrieval_digit_accuracy'] == 0.0


def test_probe_rows_hide_the_needle_value_and_the_second_copy(prose):
  settings = corpus.niah_settings((256, 512), 96, repeats=2)
  needles = corpus.needles(0, 8, 4)
  builder = niah.Builder(settings, needles, prose.held_out, TOK)
  rows, masks = probe.retrieval_rows(builder, TOK, 257, 256, (0.0, 50.0, 100.0), 2)
  assert len(rows) == 6
  for repeat, (row, mask) in enumerate(zip(rows, masks)):
    cell = builder.cell(256, (0.0, 50.0, 100.0)[repeat % 3], repeat // 3)
    value = needles[cell['needle']]['answer']
    assert TOK.decode(list(np.asarray(row)[mask])) == value
    assert row[0] == 257 and TOK.decode(row[1:]) == cell['prompt'] + value + '.'
    assert len(row) <= 256 + 8     # the prompt is a 1T prompt

  passages = probe.passages(prose.held_out, 5)
  assert len(passages) == 5 and all(len(p) == probe.COPY_BYTES for p in passages)
  rows, masks, alone, alone_masks = probe.copy_rows(passages, TOK, 257, seed=0)
  for row, mask, single, single_mask, text in zip(rows, masks, alone, alone_masks, passages):
    n = len(TOK.encode(text))
    assert row[1:1 + n] == row[1 + n:] == TOK.encode(text)
    assert not mask[:1 + n].any() and mask[1 + n:].sum() == int(n * probe.COPY_MASKED)
    # The control is the second copy alone with the same bytes hidden.
    assert single == [257] + TOK.encode(text) and (single_mask[1:] == mask[1 + n:]).all()


def test_the_smoke_replay_runs_every_stage_then_resumes(tmp_path):
  workdir = tmp_path / 'mini'
  lladax('--config', 'configs/mini/smoke.py', f'--config.workdir={workdir}')
  out = workdir / 'report'
  summary = json.loads((out / 'results.json').read_text())
  names = {'none', 'ntk', 'diffusion_ntk', 'post_segment_seed0', 'post_eod_seed0',
           'post_concat_seed0'}
  assert set(summary['variants']) == names
  assert set(summary['strategies']) == {'segment', 'eod', 'concat'}
  for v in summary['variants'].values():
    assert set(v['niah']['exact']) == {'128', '256'} and set(v['ppl']) == {'128', '256'}
    assert all(math.isfinite(p) for p in v['ppl'].values())
  text = (out / 'results.md').read_text()
  assert '--config configs/mini/smoke.py' in text   # the command that made it
  table = [l for l in text.splitlines() if l.startswith('|')]
  assert len(table) == 2 + 3 + 3 and 'post-trained at 2T, concat (seeds 0)' in table[-1]
  probes = summary['probes']
  assert probes['length'] == 128 and probes['retrieval_prompts'] == 3   # 3 depths, 1 draw
  assert all(0 <= probes[k] <= 1 for k in ('retrieval_digit_accuracy', 'retrieval_exact',
                                           'retrieval_from_value',
                                           'retrieval_from_value_chance',
                                           'copy_accuracy_with_copy',
                                           'copy_accuracy_without_copy'))
  assert 'Base model, teacher-forced at T = 128' in text
  for picture in ('ppl', 'niah_by_length', 'niah_none', 'niah_post_segment'):
    assert (out / f'{picture}.png').stat().st_size > 1000

  # The post-trained model runs the diffusion-aware base and records its new trained length.
  saved = json.loads((workdir / 'post' / 'eod_seed0' / 'model' / 'model_config.json')
                     .read_text())
  saved = saved.get('model', saved)
  assert saved['max_sequence_length'] == 256
  head_dim = saved['d_model'] // saved['n_heads']
  assert saved['rope_theta'] == pytest.approx(
      rope.resolve('diffusion_ntk', 10000.0, head_dim, 128, 256).theta)
  assert summary['variants']['post_eod_seed0']['rope_base'] == pytest.approx(saved['rope_theta'])
  # The strategies differ only in how documents are kept apart (concat: not even an EOS).
  for strategy in ('segment', 'eod', 'concat'):
    stage = json.loads((workdir / 'post' / f'{strategy}_seed0' / 'replay_train.json').read_text())
    pipe = stage['settings']['pipeline']
    assert (pipe['packing'], pipe['add_eos']) == (strategy, strategy != 'concat')
    assert stage['settings']['rope']['rule'] == 'diffusion_ntk'
  assert set(summary['training']) == {'pretrain', 'instruct', 'instruct_long',
                                      'post_segment_seed0', 'post_eod_seed0', 'post_concat_seed0'}
  # Each phase starts from the model the one before left; the post-training from the last.
  stage = {n: json.loads((workdir / n / 'replay_train.json').read_text())['settings']
           for n in ('instruct', 'instruct_long')}
  assert stage['instruct']['checkpoint'] == str(workdir / 'pretrain' / 'model')
  assert stage['instruct_long']['checkpoint'] == str(workdir / 'instruct' / 'model')
  post = json.loads((workdir / 'post' / 'eod_seed0' / 'replay_train.json').read_text())
  assert post['settings']['checkpoint'] == str(workdir / 'instruct_long' / 'model')

  # A rerun skips every training stage and re-reads the finished evaluation cells.
  again = lladax('--config', 'configs/mini/smoke.py', f'--config.workdir={workdir}')
  assert again.stderr.count('is done; skipping it') == 1 + 2 + 3   # pretrain, instruct x2, post
  assert 'saved the model' not in again.stderr
  rerun = json.loads((out / 'results.json').read_text())
  assert ({k: v['niah']['exact'] for k, v in rerun['variants'].items()} ==
          {k: v['niah']['exact'] for k, v in summary['variants'].items()})

  # Changing a stage's settings under the same workdir is refused, naming the folder.
  bad = lladax('--config', 'configs/mini/smoke.py', f'--config.workdir={workdir}',
               '--config.replay.post_steps=3', check=False)
  assert bad.returncode == 2
  assert 'post/segment_seed0 holds a run with other settings (config.train;' in bad.stderr


def _copy_task():
  return repo_module('docs', 'mini', 'copy_task.py')


def test_copy_task_rows_repeat_their_string_and_mark_the_second_copy():
  task = _copy_task()
  tokens, segments, second = task.rows(np.random.default_rng(0), 20)
  for row, seg, span in zip(tokens, segments, second):
    n = int(span.sum())
    assert 8 <= n <= 40
    end = int(seg.sum())        # BOS ... EOS, then padding with segment 0
    text = TOK.decode([int(t) for t in row[1:end - 1]])
    s = text[len('Copy '):len('Copy ') + n]
    assert text == f'Copy {s}\nAgain {s}'
    assert TOK.decode([int(t) for t in row[span]]) == s and row[end - 1] == task.EOS


def test_copy_task_trains_and_probes_both_networks():
  task = _copy_task()
  for extra in ([], ['--independent', '--visible-source']):
    curve = task.main(['--steps', '2', '--every', '1', '--batch', '4'] + extra)
    assert [s for s, _ in curve] == [0, 1, 2] and all(0 <= a <= 1 for _, a in curve)


def _retrieval_sft():
  return repo_module('docs', 'mini', 'retrieval_sft.py')


def test_retrieval_sft_rows_noise_only_the_answer_and_one_eos():
  task = _retrieval_sft()
  rng = np.random.default_rng(0)
  needle = corpus.needles(0, 1, 4)[0]
  prompt, answer = task.record(rng, ['lorem ipsum dolor sit amet ' * 4], needle, 0, 16)
  assert prompt.endswith(f'{needle["question"]} {needle["stem"]} ')
  assert needle['needle'] in prompt and answer == needle['answer'] + '.'
  assert len(prompt) <= len(corpus.TEMPLATE) + 16 + 2 + sum(
      len(needle[k]) for k in ('needle', 'question', 'stem'))
  tokens, given, segments = task.sft_row(prompt, answer, 256)
  span = (segments > 0) & ~given    # what train_step.noise may mask and the SFT loss scores
  end = int(segments.sum())
  assert TOK.decode([int(t) for t in tokens[1:end - 1]]) == prompt + answer
  assert TOK.decode([int(t) for t in tokens[span][:-1]]) == answer and tokens[span][-1] == TOK.EOS
  assert span.sum() == len(answer) + 1 and not segments[end:].any()
  with pytest.raises(ValueError, match='lower --haystack'):
    task.sft_row(prompt, answer, 64)
  rows, masks = task.probe_rows([(prompt, answer)])
  assert TOK.decode(list(np.asarray(rows[0])[masks[0]])) == needle['answer']


def test_retrieval_sft_fine_tunes_a_saved_model(tmp_path):
  from lladax import model as model_lib, model_config, presets, saved_model
  from lladax.config import from_section
  cfg = from_section(model_config.ModelConfig, presets.tiny_model(max_sequence_length=256),
                     'config.model')
  base = saved_model.save_model(str(tmp_path / 'base'), model_lib.init(cfg, 0))
  curve = _retrieval_sft().main(['--base', base, '--steps', '2', '--every', '1', '--batch', '2',
                                 '--digits', '2'])
  assert [s for s, _, _ in curve] == [0, 1, 2]
  for _, near, far in curve:
    assert near['retrieval_prompts'] == far['retrieval_prompts'] == 64
    assert 0 <= near['retrieval_digit_accuracy'] <= near['retrieval_from_value'] <= 1
    assert 0 <= far['left_to_right_exact'] <= far['left_to_right_digits'] <= 1


def test_the_probe_line_drops_digit_order_for_one_digit_values():
  scores = dict(length=256, retrieval_digit_accuracy=0.75, retrieval_exact=0.75,
                retrieval_from_value=0.75, retrieval_from_value_chance=0.1,
                retrieval_prompts=22, copy_accuracy_with_copy=0.5,
                copy_accuracy_without_copy=0.5, copy_passages=32)
  one = report.probe_line(dict(scores, retrieval_value_tokens=1))
  assert '75.0% of the needle values right on the 22 1T prompts' in one
  assert 'in order' not in one
  four = report.probe_line(dict(scores, retrieval_value_tokens=4, retrieval_exact=0.25))
  assert "75.0% of the needle value's digits and 25.0% of whole values" in four
  assert 'not put in order' in four
