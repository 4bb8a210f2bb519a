"""Packing token streams into fixed-length rows, in the layouts of UltraLLaDA's three strategies.

The packing itself is Grain's: `split` is ConcatThenSplitIterDataset (rows are filled completely and
a document that reaches the end of a row continues at the start of the next one), `first_fit` and
`best_fit` are FirstFit/BestFitPackIterDataset (documents are never cut at a row end; rows are
padded instead, and only documents longer than a row are cut into consecutive row-sized chunks).
Grain numbers the pieces of a row 1..n (`tokens_segment_ids`, 0 for padding) and counts positions
from 0 within each piece (`tokens_positions`); `layout` turns that into the batch the model reads:

  segment  each piece its own segment id (block-diagonal attention), positions per piece
  eod      pieces joined by an end-of-document token, one segment per row (full attention),
           positions running through the row
  concat   as eod without the separator

Positions restart at 0 for the continuation of a document cut at a row end: RoPE sees only
differences within a segment, so nothing is lost, and positions stay below seq_len.

In every strategy a row holds real tokens first and padding after; the loss mask is True exactly on
the real tokens, so concatenating the real tokens of the rows in order gives back the stream that
was packed, token for token.
"""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

STRATEGIES = ('segment', 'eod', 'concat')
FITS = ('split', 'first_fit', 'best_fit')
POSITIONS = ('auto', 'document', 'row')


def document_tokens(ids: Sequence[int], *, bos_id: int | None, eos_id: int | None,
                    sep_id: int | None) -> np.ndarray:
  """One document's contribution to the stream: [BOS] text [EOS] [separator], as int32.

  Ids that are None are left out. A separator equal to a just-appended EOS is not repeated, so
  `eod` with add_eos and EOD == EOS puts one token between documents, not two.
  """
  head = [] if bos_id is None else [bos_id]
  tail = [] if eos_id is None else [eos_id]
  if sep_id is not None and tail[-1:] != [sep_id]:
    tail.append(sep_id)
  out = np.empty(len(head) + len(ids) + len(tail), np.int32)
  out[:len(head)] = head
  out[len(head):len(head) + len(ids)] = ids
  out[len(out) - len(tail):] = tail
  return out


def chunks(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
  """Consecutive pieces of at most seq_len tokens, in order."""
  return [tokens[i:i + seq_len] for i in range(0, len(tokens), seq_len)]


def pack(ds: grain.IterDataset, *, seq_len: int, fit: str, bins: int,
         seed: int) -> grain.IterDataset:
  """Rows {tokens, tokens_segment_ids, tokens_positions} [seq_len] from elements {'tokens': [n]}.

  First/best fit pack `bins` rows at a time: more bins, less padding, more documents held back.
  """
  length = {'tokens': seq_len}
  if fit == 'split':
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=length)
  ds = grain.experimental.FlatMapIterDataset(ds, _Chunk(seq_len))
  cls = (grain.experimental.FirstFitPackIterDataset if fit == 'first_fit' else
         grain.experimental.BestFitPackIterDataset)
  # The documents are already shuffled upstream; keeping bins in order keeps a long document's
  # chunks in order.
  return cls(ds, length_struct=length, num_packing_bins=bins, seed=seed, shuffle_bins=False)


def layout(packed: dict[str, np.ndarray], *, strategy: str, positions: str,
           pad_id: int) -> dict[str, np.ndarray]:
  """The model's batch [B, T] (tokens, segment_ids, positions, loss_mask) from Grain's rows."""
  pieces = packed['tokens_segment_ids'].astype(np.int32)
  real = pieces > 0
  if positions == 'auto':
    positions = 'document' if strategy == 'segment' else 'row'
  if positions == 'row':
    t = pieces.shape[-1]
    pos = np.where(real, np.arange(t, dtype=np.int32), 0).astype(np.int32)
  else:
    pos = np.where(real, packed['tokens_positions'], 0).astype(np.int32)
  return {
      'tokens': np.where(real, packed['tokens'], pad_id).astype(np.int32),
      'segment_ids': pieces if strategy == 'segment' else real.astype(np.int32),
      'positions': pos,
      'loss_mask': real,
  }


class _Chunk(grain.experimental.FlatMapTransform):
  """Cuts a document longer than a row into consecutive row-sized chunks (first/best fit)."""

  # Grain's iterator flat map does not enforce a fan-out; a book of any length is fine.
  max_fan_out = 1 << 20

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def flat_map(self, element):
    return [{'tokens': c} for c in chunks(element['tokens'], self.seq_len)]
