"""Teacher-forced probes of the replay's base model: one forward pass each, no sampler.

  retrieval  the NIAH prompts at T with their answers appended and the value's digits masked:
             accuracy of the most likely token at each digit (chance 10%) and of whole values,
             and how often that token is one of the value's digits in any slot. A network that
             finds the needle but cannot tell its digits' order scores well above chance on
             the last and only about 1/(distinct digits) of that on the first.
  copying    held-out prose passages written twice in one row, a quarter of the second copy's
             bytes masked: accuracy with the first copy in the row, and without it (the second
             copy alone, the same bytes masked). Induction heads show as the gap between the two.

The NIAH grid says whether the sampler decodes the right value; these say why not: whether the
network can look a needle up at all, and whether the copying circuit retrieval needs has formed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lladax.evals import niah

# logits_fn(tokens [B, L], positions [B, L], segment_ids [B, L]) -> logits [B, L, V]
LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

COPY_MASKED = 0.25   # share of the second copy's bytes hidden
COPY_BYTES = 48      # passage length: the two copies and BOS fit in any T >= 97


def masked_predictions(logits_fn: LogitsFn, rows: Sequence[Sequence[int]],
                       masks: Sequence[np.ndarray], mask_id: int,
                       batch_size: int = 16) -> list[np.ndarray]:
  """For each row (token ids) and mask (bool, same length): the most likely token at each masked
  position, in order. Rows are right-padded (segment 0) into batches."""
  out = []
  for start in range(0, len(rows), batch_size):
    chunk, chunk_masks = rows[start:start + batch_size], masks[start:start + batch_size]
    width = max(len(r) for r in chunk)
    tokens = np.zeros((len(chunk), width), np.int32)
    hidden = np.zeros((len(chunk), width), bool)
    segments = np.zeros((len(chunk), width), np.int32)
    for i, (row, mask) in enumerate(zip(chunk, chunk_masks)):
      tokens[i, :len(row)] = row
      hidden[i, :len(row)] = mask
      segments[i, :len(row)] = 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    noisy = np.where(hidden, mask_id, tokens)
    predicted = np.asarray(jnp.argmax(logits_fn(jnp.asarray(noisy), jnp.asarray(positions),
                                                jnp.asarray(segments)), axis=-1))
    for i, (row, mask) in enumerate(zip(chunk, chunk_masks)):
      out.append(predicted[i, :len(row)][mask])
  return out


def left_to_right_predictions(logits_fn: LogitsFn, rows: Sequence[Sequence[int]],
                              masks: Sequence[np.ndarray], mask_id: int,
                              batch_size: int = 16) -> list[np.ndarray]:
  """Like masked_predictions, but each masked position is predicted with the masked positions
  before it shown and those from it on hidden: what a sampler decoding left to right sees once
  it has the earlier tokens right. All right in a row = greedy left-to-right decoding exact."""
  starts = [np.flatnonzero(m) for m in masks]
  out = [np.zeros(len(s), np.int64) for s in starts]
  for k in range(max((len(s) for s in starts), default=0)):
    todo = [i for i, s in enumerate(starts) if len(s) > k]
    hide = []
    for i in todo:
      m = np.zeros(len(masks[i]), bool)
      m[starts[i][k:]] = True
      hide.append(m)
    guesses = masked_predictions(logits_fn, [rows[i] for i in todo], hide, mask_id, batch_size)
    for i, g in zip(todo, guesses):
      out[i][k] = g[0]
  return out


def _hits(predicted: Sequence[np.ndarray], rows: Sequence[Sequence[int]],
          masks: Sequence[np.ndarray]) -> list[np.ndarray]:
  return [p == np.asarray(r)[m] for p, r, m in zip(predicted, rows, masks)]


def retrieval_scores(guesses: Sequence[np.ndarray], rows: Sequence[Sequence[int]],
                     masks: Sequence[np.ndarray]) -> dict:
  """Digit and whole-value accuracy of the guesses at the masked digits, and the share of guesses
  that are one of the value's digits in any slot, with what a uniform guess over the ten digits
  would get there ((distinct digits)/10, averaged over digits)."""
  values = [np.asarray(r)[m] for r, m in zip(rows, masks)]
  hits = [g == v for g, v in zip(guesses, values)]
  from_value = [np.isin(g, v) for g, v in zip(guesses, values)]
  chance = [np.full(len(v), len(set(v.tolist())) / 10) for v in values]
  return {'retrieval_digit_accuracy': float(np.mean(np.concatenate(hits))),
          'retrieval_exact': float(np.mean([h.all() for h in hits])),
          'retrieval_from_value': float(np.mean(np.concatenate(from_value))),
          'retrieval_from_value_chance': float(np.mean(np.concatenate(chance))),
          'retrieval_value_tokens': float(np.mean([len(v) for v in values])),
          'retrieval_prompts': len(hits)}


def retrieval_rows(builder: niah.Builder, tokenizer, bos_id: int, length: int,
                   depths: Sequence[float], repeats: int) -> tuple[list, list]:
  """NIAH prompts of `length` tokens with the answer's value and period appended; the mask covers
  the value's tokens."""
  rows, masks = [], []
  for repeat in range(repeats):
    for depth in depths:
      cell = builder.cell(length, depth, repeat)
      prompt = [bos_id] + tokenizer.encode(cell['prompt'])
      value = tokenizer.encode(builder.needles[cell['needle']]['answer'])
      row = prompt + value + tokenizer.encode('.')
      mask = np.zeros(len(row), bool)
      mask[len(prompt):len(prompt) + len(value)] = True
      rows.append(row)
      masks.append(mask)
  return rows, masks


def copy_rows(texts: Sequence[str], tokenizer, bos_id: int,
              seed: int) -> tuple[list, list, list, list]:
  """(rows, masks) with the passage written twice, and the control (rows, masks): the second copy
  alone with the same bytes masked. Passages are cut to COPY_BYTES tokens."""
  rng = np.random.default_rng(seed)
  rows, masks, alone, alone_masks = [], [], [], []
  for text in texts:
    ids = tokenizer.encode(text)[:COPY_BYTES]
    hide = np.zeros(len(ids), bool)
    hide[rng.choice(len(ids), max(1, int(len(ids) * COPY_MASKED)), replace=False)] = True
    rows.append([bos_id] + ids + ids)
    masks.append(np.concatenate([np.zeros(1 + len(ids), bool), hide]))
    alone.append([bos_id] + ids)
    alone_masks.append(np.concatenate([[False], hide]))
  return rows, masks, alone, alone_masks


def passages(docs: Sequence[str], count: int) -> list[str]:
  """Up to `count` passages of COPY_BYTES characters, one per document long enough, whitespace
  runs folded so a passage is prose and not indentation."""
  out = []
  for doc in docs:
    text = ' '.join(doc.split())
    if len(text) >= COPY_BYTES:
      out.append(text[:COPY_BYTES])
    if len(out) == count:
      break
  return out


def run(logits_fn: LogitsFn, tokenizer, mask_id: int, bos_id: int, builder: niah.Builder,
        docs: Sequence[str], *, length: int, depths: Sequence[float], repeats: int,
        copies: int = 32, seed: int = 0) -> dict:
  """Both probes; fractions in [0, 1]."""
  rows, masks = retrieval_rows(builder, tokenizer, bos_id, length, depths, repeats)
  scores = retrieval_scores(masked_predictions(logits_fn, rows, masks, mask_id), rows, masks)
  pieces = passages(docs, copies)
  if not pieces:
    raise ValueError(f'no held-out document has {COPY_BYTES} characters for the copying probe')
  c_rows, c_masks, a_rows, a_masks = copy_rows(pieces, tokenizer, bos_id, seed)
  with_copy = np.concatenate(_hits(masked_predictions(logits_fn, c_rows, c_masks, mask_id),
                                   c_rows, c_masks))
  without = np.concatenate(_hits(masked_predictions(logits_fn, a_rows, a_masks, mask_id),
                                 a_rows, a_masks))
  return {
      'length': length,
      **scores,
      'copy_accuracy_with_copy': float(np.mean(with_copy)),
      'copy_accuracy_without_copy': float(np.mean(without)),
      'copy_passages': len(pieces),
  }
