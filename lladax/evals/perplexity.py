"""Perplexity against context length, with the two Monte Carlo estimators a diffusion LM allows.

The text (local files) is cut into chunks of `chunk` tokens; chunk i is scored given all the text
before it and nothing after (LongLLaDA's ppl/get_ppl_llada.py), so the curve shows how well the
model uses a growing context:

  longllada  per sample, k ~ U{1..C} random positions of the chunk are masked and the loss is the
             plain mean cross-entropy over them (no 1/t weight); `mc_samples` samples (8) are
             averaged into the chunk's loss.
  llada      LLaDA's likelihood bound (lladax.diffusion.log_likelihood): stratified mask counts
             l_i, sum of CE / (l_i / C) per row, averaged; -log p(chunk | prefix) / C per token.

Both curves are running geometric means of the chunks' perplexities: exp(mean chunk loss per
token) over the chunks up to each position. Outputs: ppl_results.json (the curves and the values
at `lengths`), ppl.png, and ppl_cells.jsonl (finished chunks, for resuming).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from lladax import diffusion
from lladax.config import ConfigError, choice, parse
from lladax.evals import haystack, loading, model_calls, plots, results

ESTIMATORS = ('longllada', 'llada')


@dataclasses.dataclass(frozen=True)
class PplConfig:
  """`config.ppl`."""
  text: str = ''                  # glob(s) of local text files, joined in order (e.g. one
                                  # GovReport document as LongLLaDA, or PG19 books)
  lengths: tuple[int, ...] = (4096, 8192, 12288, 16384)   # where the curve is reported; the
                                  # text is scored up to the largest
  estimators: tuple[str, ...] = ESTIMATORS
  chunk: int = 64                 # tokens per scored chunk
  mc_samples: int = 8             # Monte Carlo maskings per chunk
  mc_batch: int = 8               # llada: rows per stratified draw (divides mc_samples)
  chunk_stride: int = 1           # score every k-th chunk only (1 = all, as LongLLaDA); a cheaper
                                  # curve at 128K
  add_bos: bool = False           # LongLLaDA scores the raw text (LLaDA's tokenizer adds no BOS)
  seed: int = 0

  def __post_init__(self):
    for e in self.estimators:
      choice(e, ESTIMATORS, 'config.ppl.estimators')
    if not self.lengths or min(self.lengths) < 2 * self.chunk:
      raise ConfigError(f'config.ppl.lengths must be at least two chunks ({2 * self.chunk} '
                        'tokens) each.')
    for name in ('chunk', 'mc_samples', 'mc_batch', 'chunk_stride'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'config.ppl.{name}={getattr(self, name)} must be positive; set it to 1 '
                          'or more.')
    if self.mc_samples % self.mc_batch:
      raise ConfigError(f'config.ppl.mc_samples={self.mc_samples} is not a multiple of '
                        f'mc_batch={self.mc_batch}.')


def longllada_masks(key: jax.Array, chunk: int, samples: int) -> np.ndarray:
  """[samples, chunk] bool: each row masks k ~ U{1..chunk} positions chosen at random."""
  key_k, key_perm = jax.random.split(key)
  counts = jax.random.randint(key_k, (samples,), 1, chunk + 1)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key_perm, (samples, chunk)), axis=1), axis=1)
  return np.asarray(ranks < counts[:, None])


def llada_masks(key: jax.Array, chunk: int, samples: int, batch: int) -> np.ndarray:
  """[samples, chunk] bool drawn exactly as diffusion.log_likelihood draws them with this key,
  mc_num=samples and batch_size=batch (so the two estimates agree to rounding)."""
  rows = []
  for k in jax.random.split(key, samples // batch):
    key_k, key_perm = jax.random.split(k)
    counts = diffusion.stratified_mask_counts(key_k, chunk, batch)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key_perm, (batch, chunk)), axis=1),
                        axis=1)
    rows.append(np.asarray(ranks < counts[:, None]))
  return np.concatenate(rows)


def chunk_loss(scorer: model_calls.ModelScorer, prefix: np.ndarray, answer: np.ndarray,
               masked: np.ndarray, estimator: str, batch: int) -> float:
  """Loss per token (nats) of `answer` given `prefix` under one estimator, from masks [M, C]."""
  m, c = masked.shape
  rows = np.concatenate([np.broadcast_to(prefix, (m, len(prefix))),
                         np.where(masked, scorer.mask_id, answer[None])], axis=1)
  ce = scorer.tail_cross_entropy(rows, np.broadcast_to(answer, (m, c)))
  counts = masked.sum(1)
  if estimator == 'longllada':
    return float(np.mean((ce * masked).sum(1) / counts))
  # LLaDA: per draw of `batch` rows, sum(CE / p) / batch; the mean over draws is -log p(answer).
  p = counts / c
  per_row = (ce * masked).sum(1) / p
  nll = float(np.mean(per_row.reshape(-1, batch).sum(1) / batch))
  return nll / c


def chunk_indices(n_tokens: int, cfg: PplConfig) -> list[int]:
  """Chunk i covers tokens [i C, (i + 1) C); chunk 0 is only ever context."""
  last = n_tokens // cfg.chunk
  return [i for i in range(1, last) if (i - 1) % cfg.chunk_stride == 0]


def curve(losses: dict[int, float], chunk: int) -> tuple[list[int], list[float]]:
  """(positions, perplexities): the running geometric mean of chunk perplexities."""
  xs, ys, total = [], [], 0.0
  for n, i in enumerate(sorted(losses), 1):
    total += losses[i]
    xs.append((i + 1) * chunk)
    ys.append(math.exp(total / n))
  return xs, ys


def at_lengths(xs: list[int], ys: list[float], lengths) -> dict[str, float]:
  """The curve's value at the last scored chunk ending at or before each length."""
  out = {}
  for length in lengths:
    before = [y for x, y in zip(xs, ys) if x <= length]
    out[str(length)] = before[-1] if before else math.nan
  return out


def load_tokens(cfg: PplConfig, tok, bos_id) -> np.ndarray:
  if not cfg.text:
    raise ConfigError('config.ppl.text is empty; point it at local text files (a long document '
                      'such as a GovReport report or a PG19 book).')
  docs = haystack.read_documents(cfg.text, 'config.ppl.text')
  ids = ([bos_id] if cfg.add_bos and bos_id is not None else []) + tok.encode('\n\n'.join(docs))
  need = max(cfg.lengths)
  if len(ids) < need:
    raise ConfigError(f'config.ppl.text has {len(ids)} tokens, fewer than the longest of '
                      f'config.ppl.lengths ({need}); give more text or shorter lengths.')
  return np.asarray(ids[:need], np.int32)


def run(config, scorer: model_calls.ModelScorer | None = None, tok=None) -> dict:
  """The eval_ppl job; `scorer` and `tok` replace the checkpoint's (tests)."""
  recipe = parse(config)
  cfg = recipe.ppl
  ecfg = recipe.eval
  if ecfg.oracle:
    raise ConfigError('config.eval.oracle=True does not apply to eval_ppl, which has no oracle '
                      '(a perplexity needs a model); drop it and pass --config.checkpoint=DIR.')
  paths = results.output_paths(recipe, ecfg, 'ppl')
  if scorer is None:
    model, tok, info = loading.load(recipe, oracle=False)
    model, put, context = loading.place(model, recipe, ecfg)
    scorer = model_calls.ModelScorer(model, ecfg.batch_size, ecfg.pad_multiple, put, context)
  else:
    info = {'checkpoint': recipe.checkpoint or 'custom scorer', 'rope': None,
            'model': None}
  tokens = load_tokens(cfg, tok, getattr(scorer, 'bos_id', None))
  settings = dict(info, text=cfg.text, chunk=cfg.chunk, mc_samples=cfg.mc_samples,
                  mc_batch=cfg.mc_batch, add_bos=cfg.add_bos, seed=cfg.seed)
  store = results.ResultStore(paths['cells'], settings, ecfg.resume)
  cells = [dict(estimator=e, chunk=i) for e in cfg.estimators
           for i in chunk_indices(len(tokens), cfg)]

  def compute(batch):
    out = []
    for cell in batch:
      i, c = cell['chunk'], cfg.chunk
      key = jax.random.fold_in(jax.random.key(cfg.seed), i)
      masks = (longllada_masks(key, c, cfg.mc_samples) if cell['estimator'] == 'longllada'
               else llada_masks(key, c, cfg.mc_samples, cfg.mc_batch))
      loss = chunk_loss(scorer, tokens[:i * c], tokens[i * c:(i + 1) * c], masks,
                        cell['estimator'], cfg.mc_batch)
      out.append({'loss': loss, 'end': (i + 1) * c})
    return out

  results.run_cells(cells, store, compute, 1, 'ppl')
  curves, values = {}, {}
  for e in cfg.estimators:
    losses = {c['chunk']: store.get(c)['loss'] for c in cells if c['estimator'] == e}
    xs, ys = curve(losses, cfg.chunk)
    curves[e] = {'positions': xs, 'perplexity': ys}
    values[e] = at_lengths(xs, ys, sorted(cfg.lengths))
  result = dict(job='eval_ppl', **settings, lengths=sorted(cfg.lengths),
                tokens=int(len(tokens)), perplexity=values, curves=curves)
  results.write_json(paths['json'], result)
  result['png'] = results.try_plot(
      plots.lines, {e: (v['positions'], v['perplexity']) for e, v in curves.items()},
      paths['png'], 'context length (tokens)', 'perplexity (running geometric mean)',
      f'perplexity against length  {info.get("checkpoint")}')
  logging.info('perplexity at %s: %s; results in %s', sorted(cfg.lengths), values, paths['json'])
  for e, v in values.items():
    print(f'ppl[{e}] ' + '  '.join(f'{l}: {p:.3f}' for l, p in v.items()))
  return result
