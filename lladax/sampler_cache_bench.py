"""What the cached sampler (lladax/sampler_cache.py) costs in accuracy and saves in time.

  python -m lladax.sampler_cache_bench --model /tmp/h20demo/model

`--model` is a model folder from the train job, e.g. the demo's
(`python -m lladax.main --config configs/demo.py --config.workdir=/tmp/h20demo`).

Samplers are named cache, cache_refresh[, last cache_recompute] (lladax/sampler_cache.py).
Accuracy: needle retrieval as the demo trains it ("q:38 key:52 c:05 | key:" -> "52"), on a grid
of context sizes (key-value pairs) and needle depths (the needle's index among them), the same
records decoded without and with each cache, with the demo's sampler settings.
Time: wall seconds of the whole generation after prompts of each length (haystacks of such
pairs) with gen_length 32, block_length 32 and each step count (the NIAH papers' decoding),
uncached and cached runs alternating in one process (the machine may be shared and noisy), each
compiled ahead of time so that compilation is not timed; the ratio is uncached / cached per
pair of neighbouring runs, and the median of those is printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import string
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import sampler, saved_model
from lladax.data import tokenizers

NEEDLE = 'key'


def needle_record(rng: np.random.Generator, n_pairs: int, depth: int) -> tuple[str, str]:
  """(prompt, answer) with the needle at index `depth` among n_pairs + 1 pairs, in the demo's
  record format (lladax/data/retrieval.py), whose own depth is random."""
  keys = list(rng.choice(list(string.ascii_lowercase), size=n_pairs, replace=False))
  keys.insert(depth, NEEDLE)
  values = [f'{v:02d}' for v in rng.integers(0, 100, size=n_pairs + 1)]
  context = ' '.join(f'{k}:{v}' for k, v in zip(keys, values))
  return f'{context} | {NEEDLE}:', values[depth]


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg'))
def _sample(graphdef, state, tokens, mask, key, cfg):
  model = nnx.merge(graphdef, state)
  return sampler.sample(model, tokens, key, cfg, mask_id=model.cfg.mask_token_id,
                        prompt_mask=mask)


def accuracy(model, tok, cfg, pairs, repeats: int, seed: int) -> tuple[float, dict]:
  """(overall %, {(n_pairs, depth): %}) of exact answers on the grid, batched per context size."""
  graphdef, state = nnx.split(model)
  mc = model.cfg
  cells, correct = {}, []
  for n in pairs:
    rng = np.random.default_rng(seed + n)
    records = [(d, *needle_record(rng, n, d)) for d in range(n + 1) for _ in range(repeats)]
    tokens, mask = sampler.left_pad([[mc.bos_token_id] + tok.encode(p) for _, p, _ in records],
                                    mc.pad_token_id)
    out = np.asarray(_sample(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask),
                             jax.random.key(seed), cfg))
    eos = (mc.eos_token_id, mc.eot_token_id)
    for (d, _, want), row in zip(records, out):
      ok = tok.decode(sampler.strip_generation(row[tokens.shape[1]:], eos)).strip() == want
      cells.setdefault((n, d), []).append(ok)
      correct.append(ok)
  return 100 * float(np.mean(correct)), {k: 100 * float(np.mean(v)) for k, v in cells.items()}


def haystack(tok, length: int, seed: int) -> np.ndarray:
  """[1, length] prompt tokens: needle records' pairs up to `length`, the question last."""
  rng = np.random.default_rng(seed)
  ids = []
  while len(ids) < length:
    ids += tok.encode(needle_record(rng, 8, int(rng.integers(9)))[0].split(' |')[0] + ' ')
  question = tok.encode(f'| {NEEDLE}:')
  return np.asarray([ids[:length - len(question)] + question], np.int32)


def timer(model, tokens, cfg):
  """A function that runs one whole generation, compiled ahead of time, and returns seconds."""
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(tokens)
  mask, key = jnp.ones(tokens.shape, bool), jax.random.key(0)
  compiled = _sample.lower(graphdef, state, tokens, mask, key, cfg).compile()

  def run():
    t = time.perf_counter()
    jax.block_until_ready(compiled(state, tokens, mask, key))
    return time.perf_counter() - t

  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', required=True, help='a model folder (e.g. the demo workdir/model)')
  p.add_argument('--kernel', default='blockwise', help='attention kernel for both samplers')
  p.add_argument('--caches', default='prompt:generation,prompt:generation:8,dual:block',
                 help='cache:cache_refresh[:cache_recompute] settings to compare with the '
                      'uncached sampler')
  p.add_argument('--pairs', default='2,3,4', help='context sizes of the accuracy grid')
  p.add_argument('--repeats', type=int, default=40, help='records per accuracy grid cell')
  p.add_argument('--lengths', default='2048,8192,16384', help="prompt lengths to time ('': none)")
  p.add_argument('--steps', default='16,32', help='sampler steps to time')
  p.add_argument('--rounds', type=int, default=2, help='alternating uncached/cached pairs')
  p.add_argument('--uncached_steps', type=int, default=0,
                 help='time the uncached sampler over this many steps and scale it to each '
                      'step count (each of its steps is one full forward pass); 0: all steps')
  p.add_argument('--skip_accuracy', action='store_true')
  args = p.parse_args(argv)
  model, _ = saved_model.load_model(args.model, attention_kernel=args.kernel,
                                   attention_options=())
  tok = tokenizers.ByteTokenizer()
  caches = [(c.split(':') + ['0'])[:3] for c in args.caches.split(',')]
  caches = [dict(cache=c, cache_refresh=r, cache_recompute=int(n)) for c, r, n in caches]
  names = [f"{c['cache']}, {c['cache_refresh']}" + (
      f", last {c['cache_recompute']}" if c['cache_recompute'] else '') for c in caches]
  demo = sampler.SamplerConfig(gen_length=4, block_length=4, steps=4)
  print(f'model {args.model}: d_model {model.cfg.d_model}, {model.cfg.n_layers} layers, '
        f'kernel {args.kernel}, backend {jax.default_backend()}')

  if not args.skip_accuracy:
    pairs = [int(n) for n in args.pairs.split(',')]
    print(f'\nAccuracy (%): needle retrieval, {len(pairs)} context sizes x every depth x '
          f'{args.repeats} records, gen_length 4, block 4, steps 4')
    print('| sampler | ' + ' | '.join(f'{n} pairs' for n in pairs) + ' | all |')
    print('|---' * (len(pairs) + 2) + '|')
    for name, cache in [('uncached', {})] + list(zip(names, caches)):
      cfg = dataclasses.replace(demo, **cache)
      overall, cells = accuracy(model, tok, cfg, pairs, args.repeats, seed=0)
      per = [np.mean([v for (n, _), v in cells.items() if n == m]) for m in pairs]
      print(f'| {name} | ' + ' | '.join(f'{v:.1f}' for v in per) + f' | {overall:.1f} |')

  lengths = [int(n) for n in args.lengths.split(',') if n]
  if not lengths:
    return
  scaled = (f'; uncached timed over {args.uncached_steps} steps and scaled to the step count'
            if args.uncached_steps else '')
  print(f'\nWall time (s) of one generation, batch 1, gen_length 32, block 32; median of '
        f'{args.rounds} alternating runs; speed-up = uncached / cached per neighbouring pair'
        f'{scaled}')
  print('| prompt | steps | uncached | ' + ' | '.join(
      f'{n} | speed-up' for n in names) + ' |')
  print('|---' * (3 + 2 * len(caches)) + '|')
  for length in lengths:
    tokens = haystack(tok, length, seed=length)
    for steps in [int(s) for s in args.steps.split(',')]:
      base = sampler.SamplerConfig(gen_length=32, block_length=32, steps=steps)
      n = args.uncached_steps or steps
      uncached = timer(model, tokens, dataclasses.replace(base, steps=n))
      runs = [lambda: uncached() * steps / n] + [
          timer(model, tokens, dataclasses.replace(base, **c)) for c in caches]
      times = [[] for _ in runs]
      for _ in range(args.rounds):
        for i, run in enumerate(runs):
          times[i].append(run())
      row = [f'{np.median(times[0]):.2f}']
      for t in times[1:]:
        ratio = np.median([u / c for u, c in zip(times[0], t)])
        row += [f'{np.median(t):.3f}', f'{ratio:.1f}x']
      print(f'| {length} | {steps} | ' + ' | '.join(row) + ' |', flush=True)


if __name__ == '__main__':
  main()
