"""A generated key-value retrieval task: the smallest test of reading a context.

  "q:38 c:05 x:71 d:94 | x:" -> "71"

Keys are distinct letters, values two-digit numbers; the question repeats one key. Copying a
random value from the context is right 1 / n_pairs of the time, so accuracy above that is
retrieval, not guessing.
"""
from __future__ import annotations

import string

import numpy as np


def example(rng: np.random.Generator, n_pairs: int) -> tuple[str, str]:
  """(prompt, answer) for one record."""
  keys = rng.choice(list(string.ascii_lowercase), size=n_pairs, replace=False)
  values = [f'{v:02d}' for v in rng.integers(0, 100, size=n_pairs)]
  asked = int(rng.integers(n_pairs))
  context = ' '.join(f'{k}:{v}' for k, v in zip(keys, values))
  return f'{context} | {keys[asked]}:', values[asked]
