"""The single-host demo data: generated retrieval records and the greedy packer."""
import numpy as np

from lladax.data import retrieval, simple, tokenizers


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
  cfg = simple.DataConfig(source='retrieval', n_pairs=4, max_questions=4, seq_len=48)
  rng = np.random.default_rng(1)
  for _ in range(50):
    tokens, given = simple.retrieval_row(rng, tok, cfg, eos_id=tok.EOS, bos_id=tok.BOS)
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
