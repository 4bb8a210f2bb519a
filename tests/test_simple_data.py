"""The single-host demo data: generated retrieval records and the greedy packer."""
import json

import jax
import numpy as np
import pytest

from lladax.config import ConfigError
from lladax.data import config as data_config, retrieval, simple, tokenizers
from lladax.train import step as train_step


def test_needle_records_hide_the_key_once_at_varying_depths():
  rng = np.random.default_rng(0)
  depths = set()
  for _ in range(200):
    prompt, answer = retrieval.example(rng, 4, needle='key')
    context, question = prompt.split(' | ')
    pairs = dict(p.split(':') for p in context.split(' '))
    assert len(pairs) == 5 and question == 'key:'
    assert pairs['key'] == answer and len(answer) == 2
    depths.add(context.split(' ').index(f'key:{answer}'))
  assert depths == set(range(5))
  assert retrieval.chance(4, 'key') == 0.2 and retrieval.chance(4) == 0.25


def test_key_value_records_ask_their_own_keys_and_mark_only_values_as_answers():
  tok = tokenizers.ByteTokenizer()
  cfg = data_config.DataConfig(source='retrieval', n_pairs=4, max_questions=4, seq_len=48)
  rng = np.random.default_rng(1)
  for _ in range(50):
    tokens, given, segments = simple.retrieval_row(rng, tok, cfg, eos_id=tok.EOS,
                                                   bos_id=tok.BOS)
    assert (segments == 1).all()   # LLaDA's SFT: the padding is part of the row
    text = tok.decode(tokens)
    context, questions = text.split(' | ')
    pairs = dict(p.split(':') for p in context.split(' '))
    for q in questions.split(' '):
      key, value = q.split(':')
      assert pairs[key] == value
    answers = tok.decode(tokens[~given & (tokens != tok.EOS)])
    assert answers == ''.join(q.split(':')[1] for q in questions.split(' '))
    assert given[0] and not given[-1]  # BOS given; EOS padding is answer (LLaDA SFT)


def test_greedy_packing_loses_no_token_and_restarts_positions():
  docs = [list(range(100, 105)), list(range(200, 213)), [300], list(range(400, 407))]
  rows = list(simple.pack_rows(iter(docs), 8, pad_id=0))
  tokens = np.concatenate([r[0] for r in rows])
  seg = np.concatenate([r[1] for r in rows])
  np.testing.assert_array_equal(tokens[seg > 0], np.concatenate(docs))
  for tok, s, pos in rows:
    for sid in set(s[s > 0]):
      np.testing.assert_array_equal(pos[s == sid], np.arange((s == sid).sum()))
    assert (tok[s == 0] == 0).all()
  assert [list(r[1]) for r in rows][0] == [1, 1, 1, 1, 1, 2, 2, 2]


def _sft_file(tmp_path, records):
  path = tmp_path / 'sft.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  return str(path)


def test_sft_records_mask_only_their_answers_and_every_record_comes_once_per_epoch(tmp_path):
  tok = tokenizers.ByteTokenizer()
  records = [{'prompt': f'q{i} is ', 'answer': f'{i}.'} for i in range(6)]
  cfg = data_config.DataConfig(source='sft_jsonl', path=_sft_file(tmp_path, records), seq_len=12,
                          batch_size=3)
  batches = simple.batches(cfg, tok, 0, eos_id=tok.EOS, bos_id=tok.BOS)
  seen = []
  for _ in range(2):   # one epoch: 6 records in 2 batches of 3
    b = next(batches)
    for tokens, given in zip(b['tokens'], b['prompt_mask']):
      assert tokens[0] == tok.BOS and given[0]
      text = tok.decode([t for t, g in zip(tokens[1:], given[1:]) if g])
      answer = tok.decode([t for t, g in zip(tokens, given) if not g and t != tok.EOS])
      assert answer == text[1:-4] + '.'   # 'q3 is ' -> '3.'
      assert (tokens[~given][len(answer):] == tok.EOS).all()   # EOS padding is answer
      seen.append(answer)
  assert sorted(seen) == [f'{i}.' for i in range(6)]


def test_ignored_sft_padding_leaves_the_loss_only_the_answer_and_one_eos(tmp_path):
  tok = tokenizers.ByteTokenizer()
  records = [{'prompt': 'the code is ', 'answer': '4821.'}, {'prompt': 'x is ', 'answer': '7.'}]
  kept = {}
  for padding in ('answer', 'ignored'):
    cfg = data_config.DataConfig(source='sft_jsonl', path=_sft_file(tmp_path, records), seq_len=32,
                            batch_size=2, sft_padding=padding)
    b = next(simple.batches(cfg, tok, 0, eos_id=tok.EOS, bos_id=tok.BOS))
    # p = 1 - eps masks every maskable token, so `masked` is exactly what the loss can score.
    noised = train_step.noise(b, jax.random.PRNGKey(0), mask_id=258, eps=1.0, sft=True)
    kept[padding] = b, noised
  b, noised = kept['ignored']
  for tokens, segments, masked in zip(b['tokens'], b['segment_ids'], np.asarray(noised['masked'])):
    answer = tok.decode([t for t in tokens[masked] if t != tok.EOS])
    assert answer in ('4821.', '7.')
    assert masked.sum() == len(answer) + 1 and tokens[masked][-1] == tok.EOS   # one EOS ends it
    length = int(segments.sum())
    assert (segments[:length] == 1).all() and (segments[length:] == 0).all()
    assert tokens[length - 1] == tok.EOS and masked[length - 1] and not masked[length:].any()
  b, noised = kept['answer']
  assert (b['segment_ids'] == 1).all()
  assert (np.asarray(noised['masked']).sum(axis=1) == 32 - b['prompt_mask'].sum(axis=1)).all()


def test_sft_records_that_cannot_be_trained_are_named(tmp_path):
  tok = tokenizers.ByteTokenizer()

  def open_(path, seq_len=12):
    cfg = data_config.DataConfig(source='sft_jsonl', path=path, seq_len=seq_len, batch_size=1)
    return simple.batches(cfg, tok, 0, eos_id=tok.EOS, bos_id=tok.BOS)

  with pytest.raises(ConfigError, match='is not a file'):
    open_(str(tmp_path / 'missing.jsonl'))
  with pytest.raises(ConfigError, match="line 2 has no 'answer' string"):
    open_(_sft_file(tmp_path, [{'prompt': 'a', 'answer': 'b'}, {'prompt': 'a'}]))
  with pytest.raises(ConfigError, match=r'sft.jsonl line 1: 22 tokens with BOS and EOS; raise'):
    open_(_sft_file(tmp_path, [{'prompt': 'a' * 19, 'answer': 'b'}]), seq_len=16)


def test_an_unknown_sft_padding_is_named():
  with pytest.raises(ConfigError, match='config.data.sft_padding'):
    data_config.DataConfig(source='sft_jsonl', sft_padding='eos')
