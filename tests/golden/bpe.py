"""A small byte-level BPE in tiktoken's file format, with cl100k's split pattern and specials.

The papers count lengths in cl100k_base. That file is 1.7 MB and cannot be downloaded here, so
the golden data and the tests count in a BPE learned on generated text that this module writes
(`write(path)`): every byte is a token, then a few hundred merges. tiktoken's own code runs it,
through the same `tiktoken.Encoding` both in the official code (patched in by record.py) and in
lladax (which builds its encoding from a file named `cl100k_base.tiktoken` the same way), so a
difference in counting, cutting or decoding between the two shows up in the goldens.

Nothing here depends on Python's or numpy's random generators, so the file is the same on every
version: a fixed linear congruential generator picks the corpus words.
"""
from __future__ import annotations

import base64
import collections
import os
import re

WORDS = '''
the of and to in is was for on that with as by at from it his an were are which this be or has
had not but one their new after who they have her she two been other when there all during into
school time may years more most only over city some world would where later up such used many can
state about national out known university united then made first under being three between
against people its also while area found season life both well through including could family
band moon island galaxy ruler harbour storm needle number value magic secret garden river north
south report government agency summary passage question answer document paragraph variable chain
common frequent coded words assistant concise clear relevant consider before please format
'''.split()

# cl100k_base's specials; the ranks below stay far under their ids, as in the real file.
SPECIALS = {'<|endoftext|>': 100257, '<|fim_prefix|>': 100258, '<|fim_middle|>': 100259,
            '<|fim_suffix|>': 100260, '<|endofprompt|>': 100276}


def _lcg(seed: int):
  state = seed
  while True:
    state = (state * 6364136223846793005 + 1442695040888963407) % 2 ** 64
    yield state >> 33


def corpus(n_words: int = 6000, seed: int = 7) -> str:
  """Generated sentences over WORDS, with digits, punctuation and newlines."""
  draw = _lcg(seed)
  out = []
  for i in range(n_words):
    word = WORDS[next(draw) % len(WORDS)]
    if i % 11 == 0:
      word = word.capitalize()
    out.append(word)
    r = next(draw) % 23
    if r == 0:
      out.append(f'{next(draw) % 10000}.')
    elif r == 1:
      out.append(',')
    elif r == 2:
      out.append('.\n')
  return ' '.join(out)


def learn_ranks(text: str, merges: int = 400) -> dict[bytes, int]:
  """Byte-level BPE: the 256 bytes, then the most frequent adjacent pair of each round (ties by
  the pair's bytes), within cl100k's pre-tokenized pieces."""
  # A plain approximation of cl100k's pre-tokenization is enough to learn merges from.
  pieces = collections.Counter(re.findall(r' ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+',
                                          text))
  words = {tuple(bytes([b]) for b in piece.encode('utf-8')): n for piece, n in pieces.items()}
  ranks = {bytes([b]): b for b in range(256)}
  for _ in range(merges):
    pairs = collections.Counter()
    for word, n in words.items():
      for a, b in zip(word, word[1:]):
        pairs[(a, b)] += n
    if not pairs:
      break
    (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    ranks[a + b] = len(ranks)
    merged = {}
    for word, n in words.items():
      out, i = [], 0
      while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
          out.append(a + b)
          i += 2
        else:
          out.append(word[i])
          i += 1
      merged[tuple(out)] = merged.get(tuple(out), 0) + n
    words = merged
  return ranks


def _cl100k_pattern(public) -> str:
  """cl100k's split pattern, read from tiktoken's own constructor without fetching its ranks."""
  from unittest import mock  # pylint: disable=import-outside-toplevel
  with mock.patch.object(public, 'load_tiktoken_bpe', lambda *a, **k: {}):
    return public.cl100k_base()['pat_str']


def write(path: str) -> str:
  """Writes the BPE as a .tiktoken file (base64 token, space, rank per line); returns the path."""
  ranks = learn_ranks(corpus())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='ascii') as f:
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
      f.write(f'{base64.b64encode(token).decode()} {rank}\n')
  return path


def encoding(path: str):
  """The tiktoken Encoding of the file at `path` under cl100k's name, pattern and specials: what
  `tiktoken.encoding_for_model('gpt-4')` / `get_encoding('cl100k_base')` return in the recorder."""
  import tiktoken  # pylint: disable=import-outside-toplevel
  import tiktoken.load  # pylint: disable=import-outside-toplevel
  import tiktoken_ext.openai_public as public  # pylint: disable=import-outside-toplevel
  return tiktoken.Encoding(name='cl100k_base', pat_str=_cl100k_pattern(public),
                           mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path),
                           special_tokens=dict(SPECIALS))
