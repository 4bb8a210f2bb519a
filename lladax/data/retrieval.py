"""Generated retrieval records: the smallest test of reading a context.

Key-value ("q:38 c:05 x:71 d:94 | x:" -> "71"): keys are distinct letters, values two-digit
numbers, and each question repeats one of the keys. Needle ("q:38 key:52 c:05 x:71 | key:" ->
"52"): a fixed key hidden at a random depth among the pairs, and always the one asked, as in a
needle-in-a-haystack test. Copying a random number from the context is right 1 / (numbers in
the context) of the time, so accuracy above that is retrieval, not guessing. Training records
may ask several questions ("| x:71 q:38"), which gives more signal per row; the last question
always ends the record, as at evaluation.
"""
from __future__ import annotations

import string

import numpy as np


def record(rng: np.random.Generator, n_pairs: int, n_questions: int = 1,
           needle: str = '') -> list[tuple[str, bool]]:
  """A record as (text, is_answer) pieces: the context and keys are given, values are answers."""
  keys = list(rng.choice(list(string.ascii_lowercase), size=n_pairs, replace=False))
  values = [f'{v:02d}' for v in rng.integers(0, 100, size=n_pairs + bool(needle))]
  if needle:
    depth = int(rng.integers(n_pairs + 1))
    keys.insert(depth, needle)
    values.insert(depth, values.pop())
    asked = [depth]
  else:
    asked = rng.choice(n_pairs, size=min(n_questions, n_pairs), replace=False)
  context = ' '.join(f'{k}:{v}' for k, v in zip(keys, values))
  pieces = [(context + ' |', False)]
  for i in asked:
    pieces += [(f' {keys[i]}:', False), (values[i], True)]
  return pieces


def example(rng: np.random.Generator, n_pairs: int, needle: str = '') -> tuple[str, str]:
  """(prompt, answer) for a one-question record."""
  pieces = record(rng, n_pairs, 1, needle)
  return ''.join(text for text, _ in pieces[:-1]), pieces[-1][0]


def chance(n_pairs: int, needle: str = '') -> float:
  """Accuracy of answering with a random number copied from the context."""
  return 1.0 / (n_pairs + bool(needle))
