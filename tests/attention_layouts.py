"""Packed segment-id layouts that stress attention kernels (NumPy only, so that the multi-device
helper can import it before jax)."""
import numpy as np

KINDS = ('single', 'tiny', 'cross', 'padded_shard', 'empty')


def packed_row(kind: str, t: int, shards: int, rng) -> np.ndarray:
  """Segment ids [t] of one packed row; `shards` is the context size the layout should stress."""
  seg = np.zeros(t, np.int32)
  if kind == 'single':          # one document over every shard
    seg[:] = 1
  elif kind == 'tiny':          # many documents of 1-3 tokens, then a little padding
    pos, doc = 0, 1
    while pos < t - 4:
      n = int(rng.integers(1, 4))
      seg[pos:pos + n] = doc
      pos, doc = pos + n, doc + 1
  elif kind == 'cross':         # documents straddling shard boundaries, padding at the end
    cuts = sorted(rng.choice(np.arange(1, t - 5), size=4, replace=False))
    for i, (a, b) in enumerate(zip([0] + cuts, cuts + [t - 5])):
      seg[a:b] = i + 1
  elif kind == 'padded_shard':  # a whole shard of padding in the middle, documents around it
    width = t // shards
    hole = (shards // 2) * width if shards > 1 else t // 2
    seg[:hole] = 1 + (np.arange(hole) >= hole // 3)
    seg[hole + width:] = 3
  elif kind == 'empty':         # a row that is all padding
    pass
  else:
    raise ValueError(kind)
  return seg


def layouts(t: int, shards: int, seed: int):
  """(label, segment ids [2, t]) pairs covering every kind of row."""
  rng = np.random.default_rng(seed)
  for a, b in [('cross', 'padded_shard'), ('single', 'tiny'), ('empty', 'cross')]:
    yield f'{a}+{b}', np.stack([packed_row(a, t, shards, rng), packed_row(b, t, shards, rng)])
