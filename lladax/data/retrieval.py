"""A generated key-value retrieval task: the smallest test of reading a context.

  "q:38 c:05 x:71 d:94 | x:" -> "71"

Keys are distinct letters, values two-digit numbers; each question repeats one key. Copying a
random value from the context is right 1 / n_pairs of the time, so accuracy above that is
retrieval, not guessing. Training records may ask several questions ("| x:71 q:38"), which gives
more retrieval signal per row; the last question always ends the record, as at evaluation.
"""
from __future__ import annotations

import string

import numpy as np


def record(rng: np.random.Generator, n_pairs: int, n_questions: int = 1) -> list[tuple[str, bool]]:
  """A record as (text, is_answer) pieces: the context and keys are given, values are answers."""
  keys = rng.choice(list(string.ascii_lowercase), size=n_pairs, replace=False)
  values = [f'{v:02d}' for v in rng.integers(0, 100, size=n_pairs)]
  context = ' '.join(f'{k}:{v}' for k, v in zip(keys, values))
  pieces = [(context + ' |', False)]
  for asked in rng.choice(n_pairs, size=min(n_questions, n_pairs), replace=False):
    pieces += [(f' {keys[asked]}:', False), (values[asked], True)]
  return pieces


def example(rng: np.random.Generator, n_pairs: int) -> tuple[str, str]:
  """(prompt, answer) for a one-question record."""
  pieces = record(rng, n_pairs, 1)
  return ''.join(text for text, _ in pieces[:-1]), pieces[-1][0]
