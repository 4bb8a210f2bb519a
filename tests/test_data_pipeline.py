"""The Grain pipeline end to end: no token lost or duplicated, layouts, determinism, resume, shards.

Documents are 'doc:D:N' and a test tokenizer turns them into N unique ids D*1000+10+i, so every
token of the output says which document it came from and where; specials are 1 (BOS), 2 (EOS),
3 (EOD) and 0 (pad).
"""
import collections
import json
import logging

import numpy as np
import pytest

from lladax.config import ConfigError, from_section
from lladax.data import pipeline
from lladax.data.pipeline import PipelineConfig

BOS, EOS, EOD, PAD = 1, 2, 3, 0


class IdTokenizer:
  vocab_size = 1 << 20

  def encode(self, text):
    _, d, n = text.split(':')
    return [int(d) * 1000 + 10 + i for i in range(int(n))]

  def decode(self, ids):
    return ' '.join(map(str, ids))


def write_docs(path, lengths, extra_lines=()):
  with open(path, 'w') as f:
    for d, n in enumerate(lengths):
      f.write(json.dumps({'text': f'doc:{d}:{n}'}) + '\n')
    for line in extra_lines:
      f.write(line + '\n')
  return str(path)


def lengths_for(n_docs, seq_len, seed=0):
  """Short documents, a few exactly a row long and a few several rows long."""
  rng = np.random.default_rng(seed)
  lengths = list(rng.integers(1, seq_len // 2, n_docs))
  lengths[3] = seq_len
  lengths[5] = 3 * seq_len + 5
  lengths[7] = seq_len - 1
  return [int(x) for x in lengths]


def build(path, **kw):
  kw.setdefault('seq_len', 32)
  kw.setdefault('batch_size', 2)
  kw.setdefault('num_epochs', 1)
  ids = dict(eos_id=EOS, bos_id=BOS, pad_id=PAD, eod_id=EOD)
  for k in ('process_index', 'process_count'):
    if k in kw:
      ids[k] = kw.pop(k)
  sources = kw.pop('sources', (f'jsonl:{path}',))
  return pipeline.build(PipelineConfig(sources=sources, **kw), IdTokenizer(), **ids)


def document(d, n, *, add_bos=False, add_eos=True, sep=None):
  seq = ([BOS] if add_bos else []) + [d * 1000 + 10 + i for i in range(n)]
  seq += [EOS] if add_eos else []
  if sep is not None and seq[-1:] != [sep]:
    seq.append(sep)
  return seq


def real_stream(batches):
  """Real tokens of every row, in row order, checking the loss mask is exactly the real prefix."""
  out = []
  for b in batches:
    for tokens, mask, seg in zip(b['tokens'], b['loss_mask'], b['segment_ids']):
      n = int(mask.sum())
      assert mask[:n].all() and not mask[n:].any(), 'real tokens must come first in a row'
      assert (seg[n:] == 0).all() and (seg[:n] > 0).all() and (tokens[n:] == PAD).all()
      out += tokens[:n].tolist()
  return out


def read_order(stream, n_docs):
  """Documents in the order they start in the stream (by their first text token)."""
  first = {}
  for p, t in enumerate(stream):
    if t >= 10 and (t - 10) % 1000 == 0:
      d = (t - 10) // 1000
      assert d not in first, f'document {d} starts twice'
      first[d] = p
  assert sorted(first) == list(range(n_docs)), 'a document is missing'
  return sorted(first, key=first.get)


def expected_rows(docs, seq_len, strategy):
  """Reference concat-then-split: every row's tokens, segment ids and positions."""
  tokens, owner = [], []
  for k, seq in enumerate(docs):
    tokens += seq
    owner += [k] * len(seq)
  rows = []
  for start in range(0, len(tokens), seq_len):
    t, o = tokens[start:start + seq_len], owner[start:start + seq_len]
    seg, pos = [], []
    for i, k in enumerate(o):
      new = i == 0 or k != o[i - 1]
      seg.append((seg[-1] + 1 if seg else 1) if new else seg[-1])
      pos.append(0 if new else pos[-1] + 1)
    if strategy != 'segment':
      seg, pos = [1] * len(t), list(range(len(t)))
    pad = seq_len - len(t)
    rows.append((t + [PAD] * pad, seg + [0] * pad, pos + [0] * pad))
  return rows


def all_rows(batches):
  return [(b['tokens'][r].tolist(), b['segment_ids'][r].tolist(), b['positions'][r].tolist())
          for b in batches for r in range(len(b['tokens'])) if b['loss_mask'][r].any()]


@pytest.mark.parametrize('strategy', ['segment', 'eod', 'concat'])
@pytest.mark.parametrize('add_bos', [False, True])
def test_split_packing_matches_reference_layout(tmp_path, strategy, add_bos):
  lengths = lengths_for(40, 32)
  p = build(write_docs(tmp_path / 'd.jsonl', lengths), packing=strategy, add_bos=add_bos)
  batches = list(p)
  sep = EOD if strategy == 'eod' else None
  order = read_order(real_stream(batches), len(lengths))
  docs = [document(d, lengths[d], add_bos=add_bos, sep=sep) for d in order]
  assert all_rows(batches) == expected_rows(docs, 32, strategy)
  s = p.stats()
  assert s['tokens_read'] == s['tokens_packed'] == sum(map(len, docs))
  assert s['documents'] == s['documents_read'] == 40 and s['skipped_bad'] == s['skipped_empty'] == 0
  pieces = [max(seg) for _, seg, _ in expected_rows(docs, 32, 'segment')]
  assert s['documents_per_row'] == pytest.approx(np.mean(pieces))
  assert s['packing_efficiency'] == pytest.approx(s['tokens_packed'] / (2 * len(batches) * 32))


def test_statistics_are_logged(tmp_path, caplog):
  p = build(write_docs(tmp_path / 'd.jsonl', lengths_for(40, 32)), log_every=3)
  with caplog.at_level(logging.INFO):
    n = len(list(p))
  lines = [r.getMessage() for r in caplog.records if 'packing efficiency' in r.getMessage()]
  assert len(lines) == n // 3 + 1 and 'end of data' in lines[-1]
  assert 'documents per row' in lines[-1] and 'read 40 documents' in lines[-1]


def test_eod_equal_to_eos_is_not_doubled(tmp_path):
  p = pipeline.build(PipelineConfig(sources=(f"jsonl:{write_docs(tmp_path / 'd.jsonl', [3, 4])}",),
                                    seq_len=16, batch_size=1, packing='eod', shuffle=False,
                                    num_epochs=1), IdTokenizer(), eos_id=EOS, pad_id=PAD)
  row = next(p)
  assert row['tokens'][0, :9].tolist() == document(0, 3) + document(1, 4)
  assert row['segment_ids'][0].tolist() == [1] * 9 + [0] * 7
  assert row['positions'][0, :9].tolist() == list(range(9))


def test_concat_has_no_separator_and_eod_has_one(tmp_path):
  path = write_docs(tmp_path / 'd.jsonl', [3, 2])
  rows = {}
  for strategy in ('concat', 'eod'):
    p = build(path, packing=strategy, add_eos=False, shuffle=False, seq_len=8, batch_size=1)
    rows[strategy] = next(p)['tokens'][0].tolist()
  assert rows['concat'] == [10, 11, 12, 1010, 1011, PAD, PAD, PAD]
  assert rows['eod'] == [10, 11, 12, EOD, 1010, 1011, EOD, PAD]


@pytest.mark.parametrize('fit', ['first_fit', 'best_fit'])
def test_fit_packing_keeps_documents_whole_and_loses_nothing(tmp_path, fit):
  lengths = lengths_for(60, 32, seed=1)
  p = build(write_docs(tmp_path / 'd.jsonl', lengths), fit=fit, packing_bins=4)
  batches = list(p)
  chunks = collections.Counter()
  for d, n in enumerate(lengths):
    seq = document(d, n)
    chunks.update(tuple(seq[i:i + 32]) for i in range(0, len(seq), 32))
  seen, last_chunk = collections.Counter(), {}
  for tokens, seg, pos in all_rows(batches):
    for s in range(1, max(seg) + 1):
      piece = [t for t, g in zip(tokens, seg) if g == s]
      assert [q for q, g in zip(pos, seg) if g == s] == list(range(len(piece)))
      seen[tuple(piece)] += 1
      if piece[0] >= 10:   # a chunk's index in its document follows from its first token
        d, i = divmod(piece[0] - 10, 1000)
        assert i % 32 == 0 and last_chunk.get(d, -1) < i, 'chunks of a document out of order'
        last_chunk[d] = i
  assert seen == chunks
  s = p.stats()
  assert s['tokens_read'] == s['tokens_packed'] and s['packing_efficiency'] < 1


def test_document_positions_for_eod_and_row_positions_for_segment(tmp_path):
  path = write_docs(tmp_path / 'd.jsonl', [3, 2])
  eod = next(build(path, packing='eod', positions='document', shuffle=False, seq_len=12))
  assert eod['positions'][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]
  seg = next(build(path, positions='row', shuffle=False, seq_len=12))
  assert seg['positions'][0].tolist() == list(range(7)) + [0] * 5
  assert seg['segment_ids'][0].tolist() == [1] * 4 + [2] * 3 + [0] * 5


def test_final_batch_is_filled_with_empty_rows(tmp_path):
  p = build(write_docs(tmp_path / 'd.jsonl', [10] * 7), seq_len=16, batch_size=4)
  batches = list(p)
  assert all(b['tokens'].shape == (4, 16) for b in batches)
  assert p.stats()['filler_rows'] == 4 * len(batches) - p.stats()['rows'] > 0
  assert not batches[-1]['loss_mask'][-1].any()


def test_same_seed_same_batches_other_seed_other_order(tmp_path):
  path = write_docs(tmp_path / 'd.jsonl', lengths_for(30, 32))
  a, b, c = (list(build(path, seed=s)) for s in (5, 5, 6))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert read_order(real_stream(a), 30) != read_order(real_stream(c), 30)


def test_two_epochs_show_every_document_twice_in_new_orders(tmp_path):
  lengths = lengths_for(20, 32)
  stream = real_stream(build(write_docs(tmp_path / 'd.jsonl', lengths), num_epochs=2))
  starts = [(t - 10) // 1000 for t in stream if t >= 10 and (t - 10) % 1000 == 0]
  assert sorted(starts[:20]) == sorted(starts[20:]) == list(range(20))
  assert starts[:20] != starts[20:]
  assert len(stream) == 2 * sum(n + 1 for n in lengths)


@pytest.mark.parametrize('fit, mixed', [('split', False), ('first_fit', False), ('split', True)])
def test_restored_iterator_continues_exactly(tmp_path, fit, mixed):
  bad = ['{"text": "doc:', json.dumps({'text': ''})]
  path = write_docs(tmp_path / 'd.jsonl', lengths_for(40, 32, seed=2), extra_lines=bad)
  srcs = (f'jsonl:{path}',)
  if mixed:
    srcs += ({'kind': 'jsonl', 'path': write_docs(tmp_path / 'e.jsonl', [9] * 20), 'weight': 2},)
  for cut in (0, 1, 3, 6):
    original = build(path, fit=fit, batch_size=1, sources=srcs)
    for _ in range(cut):
      next(original)
    saved = json.dumps(original.get_state())
    rest = list(original)
    resumed = build(path, fit=fit, batch_size=1, sources=srcs)
    resumed.set_state(json.loads(saved))
    again = list(resumed)
    assert len(again) == len(rest) > 0
    for x, y in zip(rest, again):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f'{fit} cut={cut} {k}')
    assert resumed.stats() == original.stats()
    assert original.stats()['skipped_bad'] == original.stats()['skipped_empty'] == 1


def test_restore_refuses_other_settings(tmp_path):
  path = write_docs(tmp_path / 'd.jsonl', [5, 6, 7])
  state = build(path).get_state()
  with pytest.raises(ConfigError, match='seq_len=32'):
    build(path, seq_len=64).set_state(state)


def test_processes_partition_the_documents(tmp_path):
  lengths = lengths_for(50, 32)
  path = write_docs(tmp_path / 'd.jsonl', lengths)
  shares = []
  for i in range(3):
    stream = real_stream(build(path, process_index=i, process_count=3))
    shares.append({(t - 10) // 1000 for t in stream if t >= 10})
  assert sorted(len(s) for s in shares) == [16, 17, 17]
  assert set.union(*shares) == set(range(50)) and sum(map(len, shares)) == 50


def test_mixing_follows_weights(tmp_path):
  a = write_docs(tmp_path / 'a.jsonl', [2] * 50)
  b = tmp_path / 'b.jsonl'
  b.write_text(''.join(json.dumps({'body': f'doc:{500 + d}:2'}) + '\n' for d in range(50)))
  srcs = ({'kind': 'jsonl', 'path': a, 'weight': 3.0},
          {'kind': 'jsonl', 'path': str(b), 'text_field': 'body', 'weight': 1.0})
  p = build(None, sources=srcs, num_epochs=None, seq_len=32, batch_size=4)
  docs = [(t - 10) // 1000 for _ in range(25) for t in real_stream([next(p)])
          if t >= 10 and (t - 10) % 1000 == 0]
  from_b = sum(d >= 500 for d in docs)
  assert len(docs) > 300 and abs(from_b / len(docs) - 0.25) < 0.02
  # Endless: the 50 documents of a source are all shown before any repeats.
  first_a = [d for d in docs if d < 500][:50]
  assert sorted(first_a) == list(range(50))


def test_finite_mixture_shows_every_document_once(tmp_path):
  a = write_docs(tmp_path / 'a.jsonl', [2] * 30)
  b = tmp_path / 'b.jsonl'
  b.write_text(''.join(json.dumps({'text': f'doc:{500 + d}:2'}) + '\n' for d in range(30)))
  srcs = ({'kind': 'jsonl', 'path': a, 'weight': 1.0}, {'kind': 'jsonl', 'path': str(b),
                                                         'weight': 2.0})
  stream = real_stream(build(None, sources=srcs, seq_len=32))
  docs = [(t - 10) // 1000 for t in stream if t >= 10 and (t - 10) % 1000 == 0]
  assert sorted(docs) == list(range(30)) + list(range(500, 530))
  assert sum(d >= 500 for d in docs[:30]) == 20   # 2:1 while both last


def test_config_from_recipe_section(tmp_path):
  path = write_docs(tmp_path / 'd.jsonl', [5])
  cfg = from_section(PipelineConfig, {'sources': [{'kind': 'jsonl', 'path': path}], 'seq_len': 8},
                     'config.pipeline')
  assert cfg.sources[0].path == path and cfg.seq_len == 8
  with pytest.raises(ConfigError, match=r'config.pipeline.sources\[0\].glob'):
    PipelineConfig(sources=({'kind': 'jsonl', 'glob': path},))
  with pytest.raises(ConfigError, match='kind:path'):
    PipelineConfig(sources=('pg19.jsonl',))
  with pytest.raises(ConfigError, match='config.pipeline.packing'):
    PipelineConfig(packing='mask')
  with pytest.raises(ConfigError, match='add_bos'):
    pipeline.build(PipelineConfig(sources=(f'jsonl:{path}',), add_bos=True), IdTokenizer(),
                   eos_id=EOS)


def test_concat_with_an_eos_separator_is_named_as_eod_in_disguise(tmp_path, caplog):
  path = write_docs(tmp_path / 'd.jsonl', [3, 2])
  cfg = pipeline.PipelineConfig(sources=(f'jsonl:{path}',), seq_len=8, packing='concat',
                                add_eos=True, num_epochs=1)
  with caplog.at_level(logging.WARNING):
    pipeline.build(cfg, IdTokenizer(), eos_id=EOS, pad_id=PAD).close()
  assert "makes it the 'eod' packing; set add_eos=False" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):   # a distinct EOD token is a real difference
    pipeline.build(cfg, IdTokenizer(), eos_id=EOS, pad_id=PAD, eod_id=EOD).close()
  assert 'eod' not in caplog.text
