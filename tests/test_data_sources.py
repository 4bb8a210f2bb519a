"""Every source kind, and every bad input: skipped and counted, fatal, or refused at start-up."""
import json
import logging
import re

import pytest

from lladax.config import ConfigError
from lladax.data import pipeline, sources, tokenizers
from lladax.data.pipeline import PipelineConfig


def run(*srcs, **kw):
  """(texts of the documents in file order, stats), through the whole pipeline with bytes."""
  kw = dict(seq_len=4096, batch_size=1, num_epochs=1, shuffle=False, add_eos=False,
            packing='segment', **kw)
  tok = tokenizers.ByteTokenizer()
  p = pipeline.build(PipelineConfig(sources=srcs, **kw), tok, eos_id=tok.EOS)
  texts = []
  for b in p:
    for tokens, seg in zip(b['tokens'], b['segment_ids']):
      texts += [tok.decode(tokens[seg == s]) for s in range(1, seg.max() + 1)]
  return texts, p.stats()


def lines(path, *items):
  with open(path, 'wb') as f:
    for item in items:
      f.write((item if isinstance(item, bytes) else json.dumps(item).encode()) + b'\n')
  return str(path)


def test_jsonl_reads_in_order_and_skips_blank_lines(tmp_path):
  path = lines(tmp_path / 'a.jsonl', {'text': 'one'}, b'', {'text': 'two', 'id': 3}, b'\r')
  texts, stats = run(f'jsonl:{path}')
  assert texts == ['one', 'two'] and stats['documents_read'] == 2


def test_empty_documents_are_skipped_and_counted(tmp_path):
  path = lines(tmp_path / 'a.jsonl', {'text': 'one'}, {'text': ''}, {'text': ' \n'},
               {'text': None}, {'text': 'two'})
  texts, stats = run(f'jsonl:{path}')
  assert texts == ['one', 'two']
  assert stats['skipped_empty'] == 3 and stats['documents_read'] == 5 and stats['documents'] == 2


@pytest.mark.parametrize('bad, reason', [
    (b'{"text": "unclosed', 'bad JSON'),
    (b'{"text": "caf\xe9"}', 'invalid UTF-8'),
    (b'["text"]', 'not an object'),
    (b'{"text": 7}', 'not a string'),
    (b'{"body": "x"}', "no 'text' field"),
])
def test_bad_record_is_skipped_with_file_and_line(tmp_path, caplog, bad, reason):
  path = lines(tmp_path / 'a.jsonl', {'text': 'one'}, b'', bad, {'text': 'two'})
  with caplog.at_level(logging.WARNING):
    texts, stats = run(f'jsonl:{path}')
  assert texts == ['one', 'two'] and stats['skipped_bad'] == 1 and stats['documents_read'] == 3
  assert f'{path}:3' in caplog.text and reason in caplog.text


def test_bad_record_is_fatal_when_configured(tmp_path):
  path = lines(tmp_path / 'a.jsonl', {'text': 'one'}, b'{"text": "caf\xe9"}')
  with pytest.raises(pipeline.DataError, match=f"{path}:2: invalid UTF-8.*on_bad_record='skip'"):
    run(f'jsonl:{path}', on_bad_record='fail')


def test_text_files_from_folder_and_glob_with_bad_utf8_line(tmp_path, caplog):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.txt').write_text('alpha\n')
  (tmp_path / 'sub' / 'b.txt').write_text('beta\n')
  (tmp_path / '.hidden').write_text('secret')
  (tmp_path / 'sub' / 'c.txt').write_bytes(b'line one\nline \xff two\n')
  with caplog.at_level(logging.WARNING):
    texts, stats = run(f'text:{tmp_path}')
  assert texts == ['alpha\n', 'beta\n'] and stats['skipped_bad'] == 1
  assert f"{tmp_path / 'sub' / 'c.txt'}:2" in caplog.text
  texts, _ = run(f'text:{tmp_path}/**/b*.txt')
  assert texts == ['beta\n']


def test_several_sources_in_one_stream(tmp_path):
  a = lines(tmp_path / 'a.jsonl', {'text': 'from json'})
  (tmp_path / 'b.txt').write_text('from text')
  texts, _ = run(f'jsonl:{a}', f"text:{tmp_path / 'b.txt'}")
  assert sorted(texts) == ['from json', 'from text']


def test_parquet_column_and_nulls(tmp_path):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  path = str(tmp_path / 'a.parquet')
  table = pa.table({'body': ['one', None, 'two', 'three', 'four'], 'n': [1, 2, 3, 4, 5]})
  pq.write_table(table, path, row_group_size=2)
  texts, stats = run({'kind': 'parquet', 'path': path, 'text_field': 'body'})
  assert texts == ['one', 'two', 'three', 'four'] and stats['skipped_empty'] == 1
  with pytest.raises(ConfigError, match=f"{path} has no column 'text'.*'body'.*text_field"):
    run(f'parquet:{path}')


def test_arrayrecord_plain_and_json_records(tmp_path):
  writer_module = pytest.importorskip('array_record.python.array_record_module')
  plain, js = str(tmp_path / 'p.array_record'), str(tmp_path / 'j.array_record')
  for path, records in ((plain, [b'one', b'\xff', b'two']),
                        (js, [json.dumps({'text': 'three'}).encode(), b'{oops'])):
    w = writer_module.ArrayRecordWriter(path, 'group_size:1')
    for r in records:
      w.write(r)
    w.close()
  texts, stats = run({'kind': 'arrayrecord', 'path': plain, 'text_field': ''}, f'arrayrecord:{js}')
  assert sorted(texts) == ['one', 'three', 'two'] and stats['skipped_bad'] == 2
  with pytest.raises(ConfigError, match=f"{js} record 0 has no 'body' field"):
    run({'kind': 'arrayrecord', 'path': js, 'text_field': 'body'})


def test_missing_field_fails_at_start_up_naming_file_and_setting(tmp_path):
  path = lines(tmp_path / 'a.jsonl', b'{oops', {'body': 'x', 'id': 1})
  with pytest.raises(ConfigError, match=rf"{path}:2 has no 'text' field.*'body'.*"
                                        r'config.pipeline.sources\[0\].text_field'):
    run(f'jsonl:{path}')


@pytest.mark.parametrize('path', ['missing.jsonl', 'nothing/*.jsonl', 'empty_dir'])
def test_missing_files_fail_at_start_up_naming_the_path(tmp_path, path):
  (tmp_path / 'empty_dir').mkdir()
  with pytest.raises(ConfigError, match=re.escape(str(tmp_path / path)) + '.*matches no file'):
    run(f'jsonl:{tmp_path / path}')


def test_empty_source_fails_at_start_up(tmp_path):
  (tmp_path / 'a.jsonl').write_text('\n\n')
  (tmp_path / 'b.jsonl').write_text('')
  with pytest.raises(ConfigError, match=r'holds no documents in its 2 file\(s\)'):
    run(f'jsonl:{tmp_path}/*.jsonl')
  with pytest.raises(ConfigError, match=r'sources is empty'):
    run()
  with pytest.raises(ConfigError, match=r'path is empty'):
    run('text:')


def test_line_index_handles_no_trailing_newline_and_crlf(tmp_path):
  path = tmp_path / 'a.jsonl'
  path.write_bytes(b'{"a":1}\r\n\r\n\n{"a":2}')
  starts, ends, numbers = sources.line_index(str(path))
  assert numbers.tolist() == [1, 4] and (ends - starts).tolist() == [8, 7]
