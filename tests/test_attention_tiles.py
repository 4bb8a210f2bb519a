"""The blockwise kernel's tile kinds (skip, plain, masked): each is taken only where it is
exact, and a row layout that mixes all three still matches the dense reference."""
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.attention import blockwise
from tests.test_attention_kernels import assert_matches, operands


def rows(seed: int, t: int) -> np.ndarray:
  """Segment ids [1, t]: long documents, a run of padding, and (seed odd) unsorted ids."""
  rng = np.random.default_rng(seed)
  cuts = np.sort(rng.choice(np.arange(1, t), size=3, replace=False))
  ids = np.array([1, 2, 0, 3]) if seed % 2 == 0 else np.array([3, 0, 1, 2])
  return np.repeat(ids, np.diff(np.concatenate([[0], cuts, [t]])))[None].astype(np.int32)


def test_tile_kind_is_exact_where_it_skips_or_drops_the_mask():
  seen = set()
  for seed in range(12):
    seg = rows(seed, 96)
    for bq, bk in [(8, 16), (16, 8), (32, 32)]:
      for i in range(0, 96, bq):
        for j in range(0, 96, bk):
          qs, ks = jnp.asarray(seg[:, i:i + bq]), jnp.asarray(seg[:, j:j + bk])
          kind = int(blockwise._tile_kind(qs, ks))
          visible = np.asarray(blockwise._visible(qs, ks))
          seen.add(kind)
          if kind == blockwise.FULL:
            assert visible.all(), (seed, i, j)
          if kind == blockwise.SKIP:
            assert not visible.any(), (seed, i, j)
  assert seen == {blockwise.SKIP, blockwise.FULL, blockwise.MASKED}


def test_one_document_takes_the_plain_tile():
  seg = jnp.ones((2, 16), jnp.int32)
  assert int(blockwise._tile_kind(seg, seg)) == blockwise.FULL
  assert int(blockwise._tile_kind(seg, seg.at[1, 3].set(0))) == blockwise.MASKED
  assert int(blockwise._tile_kind(seg, 2 * seg)) == blockwise.SKIP


@pytest.mark.parametrize('seed,kh', [(0, 4), (1, 2)])
def test_blockwise_matches_reference_with_plain_masked_and_skipped_tiles(seed, kh):
  t = 120
  q, k, v, ct = operands(seed, 1, t, t, 4, kh)
  seg = rows(seed, t)
  assert_matches('blockwise', q, k, v, seg, seg, ct, block_q=16, block_kv=24)
  one = np.ones((1, t), np.int32)   # every tile plain
  assert_matches('blockwise', q, k, v, one, one, ct, block_q=16, block_kv=24)
