"""Haystack text and needle insertion by token depth, with lengths counted in a chosen tokenizer.

Lengths are counted in the model's tokenizer unless `count_tokenizer` names a local file: a
`.tiktoken` BPE file (e.g. cl100k_base.tiktoken, as the papers counted; needs the tiktoken
package, which otherwise downloads its encodings), a sentencepiece `.model` or a Hugging Face
`tokenizer.json`. Cutting and insertion work on character offsets of the original text, so the
haystack is never re-decoded (no tokenizer round-trip artefacts in the prompt).
"""
from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import os
import re
from typing import Sequence
from unittest import mock

import numpy as np

from lladax.config import ConfigError
from lladax.data import simple, tokenizers
from lladax.evals import words


class TiktokenTokenizer:
  """A tiktoken BPE read from a local `.tiktoken` file; the file's name ('cl100k_base', ...) picks
  the encoding's split pattern (cl100k's when the name is not a known encoding)."""

  def __init__(self, path: str):
    try:
      import tiktoken  # pylint: disable=import-outside-toplevel
      from tiktoken_ext import openai_public  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(f'counting lengths with {path} needs the tiktoken package; pip install '
                        'tiktoken, or count in the model\'s tokenizer (count_tokenizer="").'
                        ) from None
    name = os.path.basename(path).split('.')[0]
    make = openai_public.ENCODING_CONSTRUCTORS.get(name, openai_public.cl100k_base)
    ranks = read_tiktoken_ranks(path)
    # The constructor would fetch its ranks from the web; hand it the local ones instead.
    with mock.patch.object(openai_public, 'load_tiktoken_bpe', lambda *a, **k: ranks):
      spec = make()
    self._enc = tiktoken.Encoding(**spec)
    self.vocab_size = self._enc.n_vocab

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def encode_refusing_special(self, text: str) -> list[int]:
    """tiktoken's `encode` with its defaults, as NeedleBench tokenizes: text holding a special
    token's string (e.g. '<|endoftext|>') raises ValueError instead of being encoded as text."""
    return self._enc.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode(list(ids))

  def token_starts(self, text: str) -> list[int]:
    _, starts = self._enc.decode_with_offsets(self.encode(text))
    return starts


# sha256 of cl100k_base.tiktoken as tiktoken downloads it (tiktoken_ext.openai_public).
CL100K_SHA256 = '223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7'


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
  """The ranks of a .tiktoken file (base64 token, space, rank per line). Read here rather than by
  tiktoken's loader, which caches every path it reads under /tmp by the path's name, so a file
  replaced at the same path would be read stale."""
  ranks = {}
  with open(path, 'rb') as f:
    for i, line in enumerate(f.read().splitlines()):
      if not line:
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
      except ValueError:
        raise ConfigError(f'{path} line {i + 1} is not "<base64 token> <rank>"; give a '
                          'tiktoken encoding file such as cl100k_base.tiktoken.') from None
  return ranks


def cl100k(path: str, where: str) -> tuple[TiktokenTokenizer, list[str]]:
  """(tokenizer, deviations): the papers' length unit, a local .tiktoken file read as
  cl100k_base; a file other than the real cl100k_base.tiktoken is allowed (the tests count in a
  small BPE) and named as a deviation, since every length then differs from the papers'."""
  if not path:
    raise ConfigError(f'{where} is empty; the papers count lengths in cl100k_base: set it to a '
                      'local cl100k_base.tiktoken file.')
  if not path.endswith('.tiktoken') or not os.path.isfile(path):
    raise ConfigError(f'{where}={path!r} is not a local .tiktoken file; the papers count lengths '
                      'in cl100k_base: give a local cl100k_base.tiktoken.')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  deviations = [] if digest == CL100K_SHA256 else [
      f'{where}={path} is not cl100k_base.tiktoken (sha256 {digest[:12]}..., cl100k_base: '
      f'{CL100K_SHA256[:12]}...): lengths are counted in another encoding']
  return TiktokenTokenizer(path), deviations


def counting_tokenizer(path: str, model_tokenizer: tokenizers.Tokenizer,
                       where: str) -> tuple[tokenizers.Tokenizer, str]:
  """(tokenizer, description): the file `path` names, or the model's tokenizer when it is ''."""
  if not path:
    return model_tokenizer, 'model'
  if not os.path.exists(path):
    raise ConfigError(f'{where}={path!r} does not exist; give a local .tiktoken, sentencepiece '
                      '.model or tokenizer.json file, or "" to count in the model\'s tokens.')
  if path.endswith('.tiktoken'):
    return TiktokenTokenizer(path), path
  if path.endswith('.model'):
    return tokenizers.SentencePieceTokenizer(path), path
  return tokenizers.HFTokenizer(path), path


def token_starts(tok: tokenizers.Tokenizer, text: str) -> list[int]:
  """The character offset at which each token of `text` starts."""
  if hasattr(tok, 'token_starts'):
    return tok.token_starts(text)
  if isinstance(tok, tokenizers.ByteTokenizer):
    starts = []
    for i, ch in enumerate(text):
      starts += [i] * len(ch.encode('utf-8'))
    return starts
  inner = getattr(tok, '_tok', None)  # HFTokenizer: offsets come with the encoding
  if inner is not None and hasattr(inner, 'encode'):
    return [a for a, _ in inner.encode(text, add_special_tokens=False).offsets]
  sp = getattr(tok, '_sp', None)
  if sp is not None:
    return [p.begin for p in sp.encode(text, out_type='immutable_proto').pieces]
  return _starts_by_bisection(tok, text)


def _starts_by_bisection(tok, text: str) -> list[int]:
  """Any tokenizer: token k starts after the longest prefix that encodes to k tokens."""
  n = len(tok.encode(text))
  starts = []
  for k in range(n):
    lo, hi = 0, len(text)
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if len(tok.encode(text[:mid])) <= k:
        lo = mid
      else:
        hi = mid - 1
    starts.append(lo)
  return starts


def prefix(text: str, starts: Sequence[int], n_tokens: int) -> str:
  """The first n_tokens tokens of `text` as text (all of it when it is shorter)."""
  return text if n_tokens >= len(starts) else text[:starts[n_tokens]]


# ---------------------------------------------------------------------------------------------
# Corpora


def read_documents(pattern: str, where: str) -> list[str]:
  """Documents of the local files a glob (or comma-separated globs) matches: each `.txt`-like file
  is one document; each record of a `.jsonl` file is one (its 'text', 'context' or 'content')."""
  paths = []
  for part in pattern.split(','):
    part = simple.expand_path(part.strip())
    paths += sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
  if not paths:
    raise ConfigError(f'{where}={pattern!r} matches no file; point it at local text files, or '
                      'leave it empty to use generated text.')
  docs = []
  for path in paths:
    with open(path, encoding='utf-8', errors='replace') as f:
      if path.endswith('.jsonl'):
        for line in f:
          if line.strip():
            record = json.loads(line)
            text = next((record[k] for k in ('text', 'context', 'content') if k in record), '')
            if text.strip():
              docs.append(text.strip())
      else:
        text = f.read()
        if text.strip():
          docs.append(text.strip())
  if not docs:
    raise ConfigError(f'{where}={pattern!r} matches only empty files; give files with text.')
  return docs


def read_records(path: str, where: str) -> list[dict]:
  """Every line of a JSON-lines file as a record, in file order, none skipped: NeedleBench shuffles
  the lines themselves, so a dropped line would change every draw after it."""
  if not path:
    raise ConfigError(f'{where} is empty; give the local JSON-lines file it names.')
  if not os.path.isfile(path):
    raise ConfigError(f'{where}={path!r} is not a file; give the local JSON-lines file.')
  records = []
  with open(path, 'rb') as f:
    for i, raw in enumerate(f):
      try:
        record = json.loads(raw.decode('utf-8').strip())
      except UnicodeDecodeError:
        raise ConfigError(f'{path} line {i + 1} is not UTF-8 text; re-encode that file of {where} '
                          'as UTF-8.') from None
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict):
        raise ConfigError(f'{path} line {i + 1} is not a JSON record (blank or cut off); fix '
                          f'or drop that line of {where}.')
      records.append(record)
  return records


def generated_documents(seed: int, n_docs: int = 64, sentences: int = 40) -> list[str]:
  """Plain generated prose, for a haystack when no corpus is given."""
  rng = np.random.default_rng(seed)
  return [' '.join(words.filler_sentences(rng, sentences)) for _ in range(n_docs)]


def haystack_text(docs: Sequence[str], n_tokens: int, tok, seed: int) -> tuple[str, list[int]]:
  """(text, token starts): documents in a seeded shuffled order, joined by blank lines and
  repeated as needed, covering at least n_tokens tokens."""
  order = np.random.default_rng(seed).permutation(len(docs))
  pieces, chars = [], 0
  sample = '\n\n'.join(docs[i] for i in order[:4])
  chars_per_token = max(1.0, len(sample) / max(1, len(tok.encode(sample))))
  need_chars = int(n_tokens * chars_per_token * 1.2) + 64
  while True:
    for i in order:
      pieces.append(docs[i])
      chars += len(docs[i]) + 2
      if chars >= need_chars:
        break
    if chars >= need_chars:
      text = '\n\n'.join(pieces)
      starts = token_starts(tok, text)
      if len(starts) >= n_tokens:
        return text, starts
      need_chars = int(need_chars * 1.5)


def insertion_offset(text: str, starts: Sequence[int], token_index: int, align_to: str) -> int:
  """Character offset of token `token_index`, moved back to just after the previous `align_to`
  (e.g. '.', as gkamradt's harness does) when one is given and found."""
  offset = len(text) if token_index >= len(starts) else starts[token_index]
  if align_to:
    found = text.rfind(align_to, 0, offset)
    offset = found + len(align_to) if found >= 0 else 0
  return offset


def insert(haystack: str, starts: Sequence[int], needle: str, depth: float,
           separator: str = '\n', align_to: str = '') -> tuple[str, int]:
  """(context, needle offset): `needle` wrapped in `separator` at token ⌊n·depth/100⌋ of the
  haystack (n its tokens), as NeedleBench inserts at an exact token offset."""
  n = len(starts)
  offset = insertion_offset(haystack, starts, int(n * depth / 100), align_to)
  wrapped = f'{separator}{needle}{separator}'
  return haystack[:offset] + wrapped + haystack[offset:], offset + len(separator)


def split_sentences(text: str) -> list[str]:
  """Sentences by end punctuation (no downloaded splitter data); abbreviations may split early,
  which only moves where a needle can go."""
  parts = re.split(r'(?<=[.!?。！？])\s+', text.strip())
  return [p for p in parts if p]


def warn_generated(where: str) -> None:
  logging.warning('%s is empty: the haystack is generated prose (set it to local text files for '
                  'a natural haystack).', where)
