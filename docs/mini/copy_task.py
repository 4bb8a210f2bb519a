"""Does masked-diffusion training teach the miniature's network to copy? A controlled test.

  python docs/mini/copy_task.py --steps 800                  # lladax's LLaDA, LLaDA's loss
  python docs/mini/copy_task.py --steps 300 --independent    # a plain JAX transformer instead
  python docs/mini/copy_task.py --steps 300 --visible-source  # the first copy is never masked

Rows are "Copy <s>\\nAgain <s>" with s 8..40 random characters of [a-z0-9]: every byte of the
second copy can be read off the first, nothing else predicts it. Training is LLaDA's forward
process and loss (lladax.diffusion) on the network of configs/mini/ultra.py (4 layers, d_model 192,
3 heads of 64, RoPE base 10,000), 32 rows per step, AdamW (b2 0.95, clip 1.0). Every 50 steps it
prints the accuracy of restoring a masked quarter of the second copy of 64 held-out rows in one
forward pass; chance is 1/36 = 2.8%, a network that copies gets near 100%.

--independent swaps lladax's model for the same shape written here from scratch, to tell a bug in
lladax apart from what the objective and the budget can teach (docs/mini/README.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import string
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lladax import diffusion

ROW = 96
CHARS = np.frombuffer((string.ascii_lowercase + string.digits).encode(), np.uint8)
BOS, EOS, MASK = 257, 256, 258


def rows(rng: np.random.Generator, count: int):
  """tokens, segment ids (0 = padding) and the second copy's span [count, ROW]."""
  tokens = np.full((count, ROW), EOS, np.int32)
  segments = np.zeros((count, ROW), np.int32)
  second = np.zeros((count, ROW), bool)
  for i in range(count):
    s = list(rng.choice(CHARS, int(rng.integers(8, 41))))
    ids = [BOS] + list(b'Copy ') + s + list(b'\nAgain ') + s + [EOS]
    tokens[i, :len(ids)] = ids
    segments[i, :len(ids)] = 1
    second[i, len(ids) - 1 - len(s):len(ids) - 1] = True
  return tokens, segments, second


def lladax_model(seed: int):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from lladax import config as cfg_lib, model as model_lib  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configs', 'mini',
                      'ultra.py')
  spec = importlib.util.spec_from_file_location('mini_ultra', path)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  cfg = cfg_lib.parse(recipe.get_config()).model
  graph, params = nnx.split(model_lib.init(cfg, seed))
  return params, lambda p, tokens, positions, segments: nnx.merge(graph, p)(tokens, positions,
                                                                            segments)


def independent_model(seed: int, d=192, heads=3, layers=4, hidden=512, vocab=264):
  """Pre-norm SwiGLU transformer with rotate-half RoPE (base 10,000) and bidirectional attention
  within segments: LLaDA's block, written without lladax."""
  head_dim = d // heads
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8 * layers + 2))
  normal = lambda shape, std: jax.random.normal(next(keys), shape) * std
  params = {'embed': normal((vocab, d), d ** -0.5), 'head': normal((d, vocab), d ** -0.5),
            'layers': [{'q': normal((d, d), d ** -0.5), 'k': normal((d, d), d ** -0.5),
                        'v': normal((d, d), d ** -0.5), 'o': normal((d, d), d ** -0.5 / 2),
                        'gate': normal((d, hidden), d ** -0.5),
                        'up': normal((d, hidden), d ** -0.5),
                        'down': normal((hidden, d), hidden ** -0.5 / 2)} for _ in range(layers)]}

  def norm(x):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)

  def rotate(x, positions):
    angles = positions[..., None] / 10000.0 ** (jnp.arange(0, head_dim, 2) / head_dim)
    angles = jnp.concatenate([angles, angles], -1)[:, :, None]
    x1, x2 = jnp.split(x, 2, -1)
    return x * jnp.cos(angles) + jnp.concatenate([-x2, x1], -1) * jnp.sin(angles)

  def apply(p, tokens, positions, segments):
    b, t = tokens.shape
    positions = positions.astype(jnp.float32)
    visible = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    x = p['embed'][tokens]
    for w in p['layers']:
      h = norm(x)
      q = rotate((h @ w['q']).reshape(b, t, heads, head_dim), positions)
      k = rotate((h @ w['k']).reshape(b, t, heads, head_dim), positions)
      v = (h @ w['v']).reshape(b, t, heads, head_dim)
      logits = jnp.einsum('bthd,bshd->bhts', q, k) / jnp.sqrt(head_dim)
      weights = jax.nn.softmax(jnp.where(visible[:, None], logits, -1e9), -1)
      x = x + jnp.einsum('bhts,bshd->bthd', weights, v).reshape(b, t, d) @ w['o']
      h = norm(x)
      x = x + (jax.nn.silu(h @ w['gate']) * (h @ w['up'])) @ w['down']
    return norm(x) @ p['head']

  return params, apply


def main(argv=None) -> list[tuple[int, float]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=800)
  parser.add_argument('--lr', type=float, default=2e-3)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--every', type=int, default=50)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--independent', action='store_true')
  parser.add_argument('--visible-source', action='store_true')
  args = parser.parse_args(argv)

  params, apply = (independent_model if args.independent else lladax_model)(args.seed)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(args.lr, b2=0.95, weight_decay=0.0))
  opt_state = optimizer.init(params)
  positions = jnp.broadcast_to(jnp.arange(ROW, dtype=jnp.int32), (args.batch, ROW))

  @jax.jit
  def step(params, opt_state, tokens, segments, second, key):
    def loss_fn(p):
      real = segments > 0
      maskable = second if args.visible_source else real
      noisy, masked, prob = diffusion.forward_mask(key, tokens, MASK, maskable)
      logits = apply(p, noisy, positions, segments)
      return diffusion.loss(logits, tokens, masked, prob, real,
                            maskable if args.visible_source else None)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  held = np.random.default_rng(10_000 + args.seed)
  p_tokens, p_segments, p_second = rows(held, 64)
  hidden = p_second & (held.random(p_second.shape) < 0.25)

  @jax.jit
  def probe(params):
    pos = jnp.broadcast_to(jnp.arange(ROW, dtype=jnp.int32), p_tokens.shape)
    guess = apply(params, jnp.where(hidden, MASK, p_tokens), pos, p_segments).argmax(-1)
    return jnp.sum((guess == p_tokens) & hidden) / jnp.sum(hidden)

  rng, key, start, curve = np.random.default_rng(args.seed), jax.random.PRNGKey(args.seed), \
      time.perf_counter(), []
  for i in range(args.steps + 1):
    if i % args.every == 0 or i == args.steps:
      curve.append((i, float(probe(params))))
      print(f'step {i:5d}  copy accuracy {100 * curve[-1][1]:5.1f}%  (chance 2.8%)  '
            f'{time.perf_counter() - start:6.0f} s', flush=True)
    if i < args.steps:
      key, sub = jax.random.split(key)
      params, opt_state, loss = step(params, opt_state, *rows(rng, args.batch), sub)
  return curve


if __name__ == '__main__':
  main()
