"""Data that cannot train: each fails in seconds with one sentence naming the source and why, under
the simple loader, the Grain pipeline and the train job; bad bytes are counted, never hidden."""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from lladax import jobs, presets
from lladax.config import ConfigError
from lladax.data import config as data_config, pipeline, simple, sources, tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def deadline(seconds=10):
  """Fails a test that would hang (the bug these tests guard against) instead of the suite."""

  def hang(*_):
    raise TimeoutError(f'still waiting after {seconds} s: the data loader hangs')

  old = signal.signal(signal.SIGALRM, hang)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def lines(path, *items):
  with open(path, 'wb') as f:
    for item in items:
      f.write((item if isinstance(item, bytes) else json.dumps(item).encode()) + b'\n')
  return str(path)


def first_batch(*srcs, **kw):
  """The pipeline's first batch: building it and drawing one batch must end within seconds."""
  kw = dict(seq_len=64, batch_size=1, shuffle=False, **kw)
  tok = tokenizers.ByteTokenizer()
  with deadline():
    p = pipeline.build(pipeline.PipelineConfig(sources=srcs, **kw), tok, eos_id=tok.EOS)
    with p:
      return next(p)


def parquet(path, column, **kw):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  pq.write_table(pa.table({'text': column}), str(path), **kw)
  return str(path)


@pytest.mark.parametrize('make, counts', [
    (lambda d: 'jsonl:' + lines(d / 'a.jsonl', {'text': ''}, {'text': ' \n'}, {'text': None}),
     r'of its 3 record\(s\), 3 empty; point config.pipeline.sources\[0\].path at files with text'),
    (lambda d: 'jsonl:' + lines(d / 'a.jsonl', *[b'{oops'] * 20, *[{'body': 'x'}] * 3),
     r"20 malformed, 3 missing the text field; e.g. \S+a.jsonl:1: bad JSON.*"
     r'set config.pipeline.sources\[0\].text_field'),
    (lambda d: 'jsonl:' + lines(d / 'a.jsonl', {'text': 5}, {'text': ['x']}),
     r'2 not text; e.g.'),
    (lambda d: 'text:' + str(d / 'empty.txt'), r'of its 1 record\(s\), 1 empty'),
    (lambda d: 'parquet:' + parquet(d / 'a.parquet', [None, None, ''], row_group_size=2),
     r'of its 3 record\(s\), 3 empty'),
], ids=['empty_and_null', 'malformed_then_missing_field', 'not_text', 'empty_txt', 'null_parquet'])
def test_a_source_without_text_fails_at_start_up_with_counts(tmp_path, make, counts):
  (tmp_path / 'empty.txt').write_text('')
  with pytest.raises(ConfigError, match=r'sources\[0\] \(\w+:\S+\) holds no usable text: .*'
                                        + counts):
    first_batch(make(tmp_path))


def test_a_source_without_text_among_good_ones_is_named(tmp_path):
  good = lines(tmp_path / 'good.jsonl', {'text': 'words'})
  bad = lines(tmp_path / 'bad.jsonl', {'text': ''})
  with pytest.raises(ConfigError, match=rf'sources\[1\] \(jsonl:{bad}\) holds no usable text'):
    first_batch(f'jsonl:{good}', f'jsonl:{bad}')


def test_some_text_among_bad_records_keeps_working(tmp_path):
  path = lines(tmp_path / 'a.jsonl', *[b'{oops'] * 20, {'text': 'words'}, {'body': 'x'})
  batch = first_batch(f'jsonl:{path}', num_epochs=1, add_eos=False)
  assert bytes(batch['tokens'][0][batch['loss_mask'][0]].astype('uint8')) == b'words'


def test_a_parquet_text_column_of_numbers_is_refused(tmp_path):
  path = parquet(tmp_path / 'a.parquet', [1, 2, 3])
  with pytest.raises(ConfigError, match=f"{path} column 'text' holds int64, not text; set "
                                        r'config.pipeline.sources\[0\].text_field'):
    first_batch(f'parquet:{path}')


@pytest.mark.parametrize('cut', [0, 0.5])
def test_a_truncated_parquet_file_is_named(tmp_path, cut):
  path = parquet(tmp_path / 'a.parquet', ['some words'] * 10)
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * cut))
  with pytest.raises(ConfigError, match=f'{path} is not a readable Parquet file .*; replace the '
                                        'file, or leave it out of'):
    first_batch(f'parquet:{path}')


def test_damaged_parquet_data_is_named_from_the_reader_threads(tmp_path):
  pq = pytest.importorskip('pyarrow.parquet')
  path = parquet(tmp_path / 'a.parquet', [f'document {i} ' * 20 for i in range(30)],
                 row_group_size=10)
  chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
  start = chunk.dictionary_page_offset or chunk.data_page_offset
  with open(path, 'r+b') as f:   # row group 1's data: group 0, read at start-up, stays whole
    f.seek(start + 8)
    damaged = bytes(b ^ 0xFF for b in f.read(chunk.total_compressed_size - 16))
    f.seek(start + 8)
    f.write(damaged)
  with pytest.raises(ConfigError, match=f'{path} row group 1 cannot be read'):
    tok = tokenizers.ByteTokenizer()
    with deadline():
      cfg = pipeline.PipelineConfig(sources=(f'parquet:{path}',), seq_len=64, shuffle=False,
                                    num_epochs=1)
      for _ in pipeline.build(cfg, tok, eos_id=tok.EOS):
        pass


@pytest.mark.parametrize('epochs', [None, 1])
def test_a_stream_without_text_past_the_start_up_check_stops_with_counts(tmp_path, monkeypatch,
                                                                          caplog, epochs):
  monkeypatch.setattr(sources, '_PROBE_RECORDS', 4, raising=False)
  path = lines(tmp_path / 'a.jsonl', *[{'text': ''}] * 10, *[b'{oops'] * 3)
  with caplog.at_level(logging.WARNING):
    with pytest.raises(ConfigError, match=r'sources\[0\] \(jsonl:\S+\) gave no usable text in '
                                          r'\d+ records in a row \(\d+ empty, \d+ malformed\); '
                                          rf'e.g. {path}:11: bad JSON'):
      first_batch(f'jsonl:{path}', num_epochs=epochs)
  assert 'the first 4 records hold no text (4 empty)' in caplog.text


def simple_batches(tmp_path, source, path):
  tok = tokenizers.ByteTokenizer()
  cfg = data_config.DataConfig(source=source, path=str(path), seq_len=16, batch_size=2)
  with deadline():
    return next(simple.batches(cfg, tok, 0, eos_id=tok.EOS, bos_id=tok.BOS))


def test_simple_text_files_without_text_fail_at_start_up(tmp_path):
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'blank.txt').write_text(' \n\n')
  with pytest.raises(ConfigError, match=r"config.data.path='\S+\*.txt' matches 2 file\(s\) but "
                                        'all are empty or whitespace; point it at files'):
    simple_batches(tmp_path, 'text_files', tmp_path / '*.txt')


def test_invalid_utf8_in_text_files_is_replaced_and_counted(tmp_path, caplog):
  path = tmp_path / 'a.txt'
  path.write_bytes(b'fine\r\nbad \xff\xfe here\nkept \xef\xbf\xbd\nend \xc3\n')
  with caplog.at_level(logging.WARNING):
    docs = simple.text_documents(str(path))
  assert docs == ['fine\nbad \ufffd\ufffd here\nkept \ufffd\nend \ufffd\n']
  assert (f'{path}: replaced 3 invalid UTF-8 sequence(s) with U+FFFD on 2 line(s), the first on '
          'line 2') in caplog.text


@pytest.mark.parametrize('line, message', [
    (b'{"prompt": "a", "answer": "b"', r'line 2 is not a JSON record \(bad JSON'),
    (b'{"prompt": "caf\xe9", "answer": "b"}', r'line 2 is not a JSON record \(invalid UTF-8'),
    (b'["a", "b"]', 'line 2 is a JSON list, not an object'),
    (b'{"prompt": "a", "reply": "b"}', r"line 2 has no 'answer' string \(its keys: 'prompt', "
                                       "'reply'\\)"),
])
def test_bad_sft_jsonl_lines_are_named_with_file_and_line(tmp_path, line, message):
  path = lines(tmp_path / 'sft.jsonl', {'prompt': 'a', 'answer': 'b'}, line)
  with pytest.raises(ConfigError, match=f'{path} {message}'):
    simple_batches(tmp_path, 'sft_jsonl', path)


def test_the_train_job_on_a_pipeline_without_text_stops_in_seconds(tmp_path):
  c = presets.base('train')
  c.workdir = str(tmp_path / 'run')
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(d_model=32, n_layers=1, mlp_hidden_size=64)
  c.data.update(source='pipeline', seq_len=64, batch_size=2)
  c.pipeline = presets.section(presets.pipeline_config(), seq_len=64, sources=(
      'parquet:' + parquet(tmp_path / 'a.parquet', [None] * 5),))
  with deadline(60), pytest.raises(ConfigError, match='holds no usable text'):
    jobs.run(c)


def test_the_train_command_on_an_empty_text_file_says_one_sentence(tmp_path):
  (tmp_path / 'empty.txt').write_text('')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  try:
    done = subprocess.run(
        [sys.executable, '-m', 'lladax.main', '--config', os.path.join(REPO, 'configs/tiny.py'),
         f'--config.workdir={tmp_path / "run"}', f'--config.data.path={tmp_path / "empty.txt"}'],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail('the train job hangs on a data file without text')
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('lladax: config.data.path=') and 'all are empty' in last
