"""Single-host batches for the minimal training loop and the demo.

Three sources: `retrieval` (generated prompt/answer rows, trained as SFT: the prompt is never
masked and rows are right-padded with EOS, which counts as answer as in LLaDA's SFT unless
`sft_padding='ignored'`),
`sft_jsonl` (the same for {"prompt", "answer"} records of a local JSON-lines file) and
`text_files` (documents read from local files and packed into rows with segment ids). The Grain
pipeline for pods lives beside this; these are numpy generators for one process.
"""
from __future__ import annotations

import glob
import logging
import os
import sysconfig
from typing import Iterator

import numpy as np

from lladax.config import ConfigError
from lladax.data import retrieval, sources
from lladax.data.config import DataConfig


def expand_path(pattern: str) -> str:
  return pattern.replace('{stdlib}', sysconfig.get_paths()['stdlib'])


def text_documents(pattern: str) -> list[str]:
  """Every file the glob matches, read as UTF-8 text; fails naming the glob if none matches."""
  if not pattern:
    raise ConfigError("config.data.source='text_files' needs config.data.path (a glob of "
                      'local text files).')
  pattern = expand_path(pattern)
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise ConfigError(f'config.data.path={pattern!r} matches no file; point it at local text.')
  docs = [text for text in map(read_text, paths) if text.strip()]
  if not docs:
    # Packing nothing for ever would hang the job before its first batch.
    raise ConfigError(f'config.data.path={pattern!r} matches {len(paths)} file(s) but all are '
                      'empty or whitespace; point it at files with text.')
  return docs


def read_text(path: str) -> str:
  """A file as text with universal newlines; invalid UTF-8 is replaced by U+FFFD, with a warning
  that counts it (a binary file matched by the glob shows up here)."""
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError:
    text = raw.decode('utf-8', errors='replace')
    # U+FFFD already in the file is text, not a replacement.
    replaced = text.count('\ufffd') - raw.count('\ufffd'.encode())
    lines = [n for n, line in enumerate(raw.split(b'\n'), 1) if not _is_utf8(line)]
    logging.warning('%s: replaced %d invalid UTF-8 sequence(s) with U+FFFD on %d line(s), the '
                    'first on line %d', path, replaced, len(lines), lines[0])
  return text.replace('\r\n', '\n').replace('\r', '\n')


def _is_utf8(raw: bytes) -> bool:
  try:
    raw.decode('utf-8')
  except UnicodeDecodeError:
    return False
  return True


def retrieval_row(rng, tokenizer, cfg: DataConfig, eos_id: int, bos_id=None):
  """tokens, prompt mask and segment ids [seq_len] for one SFT record (see sft_row)."""
  pieces = retrieval.record(rng, cfg.n_pairs, int(rng.integers(1, cfg.max_questions + 1)),
                            cfg.needle)
  return sft_row(pieces, tokenizer, cfg, eos_id, bos_id)


def sft_row(pieces, tokenizer, cfg: DataConfig, eos_id: int, bos_id=None, where: str = ''):
  """tokens, prompt mask and segment ids [seq_len] from (text, is_answer) pieces, right-padded
  with EOS; under sft_padding='ignored' the padding after the first EOS has segment 0."""
  ids = [bos_id] if bos_id is not None else []
  given = [True] * len(ids)
  for text, is_answer in pieces:
    piece = tokenizer.encode(text)
    ids += piece
    given += [not is_answer] * len(piece)
  if len(ids) >= cfg.seq_len:
    what = where or (f'a retrieval record (n_pairs={cfg.n_pairs}, max_questions='
                     f'{cfg.max_questions})')
    raise ConfigError(f'config.data.seq_len={cfg.seq_len} is too short for {what}: '
                      f'{len(ids) + 1} tokens with BOS and EOS; raise seq_len.')
  pad = cfg.seq_len - len(ids)
  kept = len(ids) + 1 if cfg.sft_padding == 'ignored' else cfg.seq_len
  return (np.array(ids + [eos_id] * pad, np.int32), np.array(given + [False] * pad),
          (np.arange(cfg.seq_len) < kept).astype(np.int32))


def pack_rows(docs_tokens: Iterator[list[int]], seq_len: int, pad_id: int):
  """Greedy packing: documents fill rows in order, long ones continue in the next row.

  Yields (tokens, segment_ids, positions) rows; segment ids count from 1 within a row, positions
  restart at 0 for each document piece; nothing is dropped except the final partial row's padding.
  """
  tokens, segs, pos = [], [], []
  seg = 0
  for doc in docs_tokens:
    offset = 0
    while offset < len(doc):
      room = seq_len - len(tokens)
      piece = doc[offset:offset + room]
      seg += 1
      tokens += piece
      segs += [seg] * len(piece)
      pos += list(range(len(piece)))
      offset += len(piece)
      if len(tokens) == seq_len:
        yield (np.array(tokens, np.int32), np.array(segs, np.int32), np.array(pos, np.int32))
        tokens, segs, pos, seg = [], [], [], 0
  if tokens:
    pad = seq_len - len(tokens)
    yield (np.array(tokens + [pad_id] * pad, np.int32), np.array(segs + [0] * pad, np.int32),
           np.array(pos + [0] * pad, np.int32))


def batches(cfg: DataConfig, tokenizer, seed: int, *, eos_id: int, bos_id=None) -> Iterator[dict]:
  """An endless iterator of numpy batches: tokens, positions, segment_ids, prompt_mask [B, T].

  Sources are opened here, before any batch is drawn, so a bad path fails at start-up.
  """
  rng = np.random.default_rng(seed)
  if cfg.source == 'retrieval':
    retrieval_row(np.random.default_rng(seed), tokenizer, cfg, eos_id, bos_id)  # length check
    return _retrieval_batches(cfg, tokenizer, rng, eos_id, bos_id)
  if cfg.source == 'sft_jsonl':
    rows = [sft_row(((r['prompt'], False), (r['answer'], True)), tokenizer, cfg, eos_id, bos_id,
                    f'{cfg.path} line {line}') for line, r in sft_records(cfg.path)]
    return _sft_batches(cfg, rows, rng)
  return _text_batches(cfg, text_documents(cfg.path), tokenizer, rng, eos_id, bos_id)


def sft_records(path: str) -> list[tuple[int, dict]]:
  """(line number, record) of every non-blank line; each record needs 'prompt' and 'answer'."""
  local = expand_path(path)
  if not path or not os.path.isfile(local):
    raise ConfigError(f"config.data.source='sft_jsonl' needs config.data.path, a .jsonl file of "
                      f'{{"prompt", "answer"}} records; {path!r} is not a file.')
  out = []
  with open(local, 'rb') as f:
    for i, line in enumerate(f, 1):
      if line.strip():
        out.append((i, sft_record(line, f'{local} line {i}')))
  if not out:
    raise ConfigError(f'{path} holds no records; give it {{"prompt", "answer"}} lines.')
  return out


def sft_record(raw: bytes, where: str) -> dict:
  """One {"prompt", "answer"} record of a JSON-lines line; anything else fails naming the line."""
  record = sources.load_json(raw, where)
  if isinstance(record, sources.Bad):
    raise ConfigError(f'{where} is not a JSON record ({record.reason}); make every line a UTF-8 '
                      '{"prompt": ..., "answer": ...} object.')
  if not isinstance(record, dict):
    raise ConfigError(f'{where} is a JSON {type(record).__name__}, not an object; make every '
                      'line a {"prompt": ..., "answer": ...} object.')
  lacking = [k for k in ('prompt', 'answer') if not isinstance(record.get(k), str)]
  if lacking:
    raise ConfigError(f'{where} has no {" or ".join(map(repr, lacking))} string (its keys: '
                      f'{", ".join(map(repr, sorted(record)[:8])) or "none"}); every SFT record '
                      'needs both "prompt" and "answer".')
  return record


def _sft_batches(cfg, rows, rng):
  """Rows in a fresh random order each epoch (a pass over every record before any repeats)."""
  order: list[int] = []
  while True:
    picked = []
    for _ in range(cfg.batch_size):
      if not order:
        order = list(rng.permutation(len(rows)))
      picked.append(rows[order.pop()])
    yield sft_batch(picked)


def sft_batch(rows) -> dict:
  """(tokens, prompt mask, segment ids) rows as a batch: one record per row, positions from 0."""
  b, t = len(rows), len(rows[0][0])
  return {
      'tokens': np.stack([r[0] for r in rows]),
      'prompt_mask': np.stack([r[1] for r in rows]),
      'segment_ids': np.stack([r[2] for r in rows]),
      'positions': np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
  }


def _retrieval_batches(cfg, tokenizer, rng, eos_id, bos_id):
  while True:
    yield sft_batch([retrieval_row(rng, tokenizer, cfg, eos_id, bos_id)
                      for _ in range(cfg.batch_size)])


def _text_batches(cfg, docs, tokenizer, rng, eos_id, bos_id):

  def endless():
    while True:
      for i in rng.permutation(len(docs)):
        yield ([bos_id] if bos_id is not None else []) + tokenizer.encode(docs[i]) + [eos_id]

  rows = pack_rows(endless(), cfg.seq_len, eos_id)
  while True:
    got = [next(rows) for _ in range(cfg.batch_size)]
    yield {
        'tokens': np.stack([g[0] for g in got]),
        'segment_ids': np.stack([g[1] for g in got]),
        'positions': np.stack([g[2] for g in got]),
        'prompt_mask': np.zeros((cfg.batch_size, cfg.seq_len), bool),
    }
