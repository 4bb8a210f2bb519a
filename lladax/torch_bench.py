"""lladax against a PyTorch LLaDA on the same random model, timed alternately in one process.

  python -m lladax.torch_bench                      # the issue-20 table (about 10 min on 2 cores)
  python -m lladax.torch_bench --lengths 512 --repeats 5 --skip sample
  python -m lladax.torch_bench --torch-model /path/to/torch_llada.py

The model (d_model 512, 8 heads, 8 layers, MLP 1408, vocab 32000, float32, batch 1 by default)
gets random weights in PyTorch, is written once in the Hugging Face layout, loaded back by the
PyTorch model and converted by lladax's own converter (lladax/hf/convert.py), so both sides run
the same checkpoint the way a user would. Their logits are compared before anything is timed.

`--torch-model` is a Python file defining the PyTorch network with `random_model(config, seed)`,
`save_pretrained(model, directory)` and `load_local_directory(directory)` and a `tiny_config(**)`
that makes a LLaDA config.json dict: tests/torch_llada.py of a lladax checkout, the independent
PyTorch LLaDA (SDPA attention) the tests check lladax against, is the default when present.

Work timed (each compiled or warmed up first; torch and lladax alternate, `--repeats` times,
and the median of each is printed with lladax / torch):
  forward   logits of one sequence of each of `--lengths` tokens
  train     one update at `--train-length`: LLaDA's masked-diffusion loss (a random mask ratio
            per row, CE of the masked tokens / ratio), backward, global-norm clipping and AdamW
  sample    greedy low-confidence decoding after a `--prompt`-token prompt, `--gen` tokens in
            blocks of `--block`, `--steps` steps (LLaDA's generate.py schedule); the decoded
            tokens are compared too
Numbers depend on the machine and what else runs on it; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import sampler, saved_model
from lladax.config import ConfigError
from lladax.hf import convert
from lladax.train import optimizer, step as step_lib

WORK = ('forward', 'train', 'sample')
DEFAULT_TORCH_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   'tests', 'torch_llada.py')
EPS = 1e-3   # LLaDA's smallest mask ratio in pre-training


def load_torch_module(path: str):
  """The PyTorch LLaDA module from its file (it is not part of the lladax package)."""
  if not os.path.isfile(path):
    raise ConfigError(f'--torch-model {path} does not exist; pass the path of a PyTorch LLaDA '
                      'file such as tests/torch_llada.py of a lladax checkout.')
  spec = importlib.util.spec_from_file_location('lladax_bench_torch_llada', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ('tiny_config', 'random_model', 'save_pretrained', 'load_local_directory'):
    if not hasattr(module, name):
      raise ConfigError(f'--torch-model {path} has no {name}(); it needs tiny_config, '
                        'random_model, save_pretrained and load_local_directory as '
                        'tests/torch_llada.py has them.')
  return module


def hf_config(tl, a) -> dict:
  v = a.vocab
  return tl.tiny_config(d_model=a.d_model, n_heads=a.heads, n_kv_heads=a.heads,
                        n_layers=a.layers, mlp_hidden_size=a.mlp, vocab_size=v, embedding_size=v,
                        eos_token_id=v - 3, pad_token_id=v - 3, mask_token_id=v - 1,
                        max_sequence_length=max(a.lengths + [a.prompt + a.gen, a.train_length]),
                        rope_theta=500000.0)


def build(tl, a, workdir: str):
  """(torch model, lladax model) of one random checkpoint written in the HF layout."""
  import torch
  hf_dir, lx_dir = os.path.join(workdir, 'hf'), os.path.join(workdir, 'lladax')
  tl.save_pretrained(tl.random_model(hf_config(tl, a), seed=a.seed), hf_dir, n_shards=1)
  net = tl.load_local_directory(hf_dir, torch.float32).eval()
  convert.convert(hf_dir, lx_dir)
  overrides = {'remat_policy': a.remat} if a.remat else {}
  if a.kernel:
    overrides['attention_kernel'] = a.kernel
    overrides['attention_options'] = tuple(a.kernel_option)
  model, _ = saved_model.load_model(lx_dir, **overrides)
  return net, model


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def alternate(torch_fn, lladax_fn, repeats: int) -> tuple[float, float]:
  """Medians of alternating runs (after two warm-ups each), so drift hits both sides alike."""
  for _ in range(2):
    torch_fn(), lladax_fn()
  t, x = [], []
  for _ in range(repeats):
    t.append(timed(torch_fn))
    x.append(timed(lladax_fn))
  return statistics.median(t), statistics.median(x)


# ---- forward


def lladax_forward(model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, tokens: nnx.merge(graphdef, s)(tokens))
  return lambda tokens: fn(state, tokens)


def forward_pair(net, model, tokens: np.ndarray):
  import torch
  t_tokens, x_tokens = torch.from_numpy(tokens), jnp.asarray(tokens)
  fwd = lladax_forward(model)

  def run_torch():
    with torch.inference_mode():
      return net(t_tokens)

  return run_torch, lambda: fwd(x_tokens).block_until_ready()


def check_logits(net, model, tokens: np.ndarray) -> float:
  """Largest |lladax - torch| logit difference, relative to the largest |torch| logit."""
  run_torch, _ = forward_pair(net, model, tokens)
  want = run_torch().float().numpy()
  got = np.asarray(lladax_forward(model)(jnp.asarray(tokens)))
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ---- train step


def torch_train(net, tokens: np.ndarray, mask_id: int, seed: int):
  import torch
  torch.manual_seed(seed)
  net = copy.deepcopy(net)   # the update changes the weights; later work needs the originals
  opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                          weight_decay=0.1)
  x = torch.from_numpy(tokens)

  def run():
    b, t = x.shape
    p = (1 - EPS) * torch.rand(b) + EPS
    masked = torch.rand(b, t) < p[:, None]
    logits = net(torch.where(masked, mask_id, x))
    ce = torch.nn.functional.cross_entropy(logits[masked], x[masked], reduction='none')
    loss = (ce / p[:, None].expand(b, t)[masked]).sum() / (b * t)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return loss

  return run


def lladax_train(model, tokens: np.ndarray, seed: int):
  cfg = model.cfg
  graphdef, params = nnx.split(model)
  params = jax.tree.map(jnp.copy, params)   # donated below; later work needs the originals
  tx = optimizer.adamw(optimizer.OptimConfig())
  update = jax.jit(step_lib.update_fn(graphdef, tx, mask_id=cfg.mask_token_id, eps=EPS,
                                      sft=False), donate_argnums=(0, 1))
  b, t = tokens.shape
  batch = {'tokens': jnp.asarray(tokens),
           'positions': jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
           'segment_ids': jnp.ones((b, t), jnp.int32), 'prompt_mask': jnp.zeros((b, t), bool)}
  state = {'params': params, 'opt': tx.init(params), 'key': jax.random.key(seed)}

  def run():
    state['key'], key = jax.random.split(state['key'])
    state['params'], state['opt'], metrics = update(state['params'], state['opt'], batch, key)
    return metrics['loss'].block_until_ready()

  return run


# ---- sampling


def torch_sample(net, prompt: np.ndarray, mask_id: int, gen: int, block: int, steps: int):
  """LLaDA's generate.py at temperature 0 with low-confidence remasking (read for its schedule:
  each block's masks revealed evenly over its steps, the most confident first)."""
  import torch
  per_block = steps // (gen // block)

  def run():
    with torch.inference_mode():
      x = torch.full((prompt.shape[0], prompt.shape[1] + gen), mask_id, dtype=torch.long)
      x[:, :prompt.shape[1]] = torch.from_numpy(prompt)
      for nb in range(gen // block):
        lo = prompt.shape[1] + nb * block
        counts = (x[:, lo:lo + block] == mask_id).sum(1)
        base, extra = counts // per_block, counts % per_block
        for i in range(per_block):
          masks = x == mask_id
          logits = net(x)
          x0 = logits.argmax(-1)
          conf = torch.gather(torch.softmax(logits.double(), -1), -1, x0[..., None])[..., 0]
          conf[:, lo + block:] = -np.inf
          x0 = torch.where(masks, x0, x)
          conf = torch.where(masks, conf, torch.tensor(-np.inf, dtype=conf.dtype))
          for r in range(x.shape[0]):
            k = int(base[r] + (i < extra[r]))
            idx = torch.topk(conf[r], k).indices
            x[r, idx] = x0[r, idx]
      return x

  return run


def lladax_sample(model, prompt: np.ndarray, gen: int, block: int, steps: int, seed: int):
  cfg = sampler.SamplerConfig(gen_length=gen, block_length=block, steps=steps,
                              mask_prediction='allow')
  p, key = jnp.asarray(prompt), jax.random.key(seed)
  return lambda: sampler.generate(model, p, key, cfg).block_until_ready()


# ---- the table


def _fmt(seconds: float) -> str:
  return f'{seconds * 1e3:,.0f} ms' if seconds < 1 else f'{seconds:,.2f} s'


def run(a) -> dict:
  """Prints and returns the table: {'rows': [...], 'logit_diff': ..., 'sample_identical': ...}."""
  import torch
  if a.threads:
    torch.set_num_threads(a.threads)
  tl = load_torch_module(a.torch_model)
  rng = np.random.default_rng(a.seed)
  rows, result = [], {'sample_identical': None}
  with tempfile.TemporaryDirectory(prefix='lladax_torch_bench_') as workdir:
    net, model = build(tl, a, workdir)
    mask_id = model.cfg.mask_token_id
    live = mask_id - 3   # token ids below the special ones
    tokens = lambda t: rng.integers(0, live, size=(a.batch, t)).astype(np.int64)
    print(f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start; '
          f'lladax kernel {model.cfg.attention_kernel} {model.cfg.attention_kwargs or ""}, '
          f'remat {model.cfg.remat_policy}; torch {torch.__version__} '
          f'({torch.get_num_threads()} threads) from {a.torch_model}', flush=True)
    agree = result['logit_diff'] = check_logits(net, model, tokens(min(a.lengths)))
    print(f'logits agree to {agree:.1e} (max |diff| / max |logit|) at {min(a.lengths)} tokens',
          flush=True)
    work = []
    if 'forward' in a.work:
      work += [(f'forward, {t} tokens', lambda t=t: forward_pair(net, model, tokens(t)))
               for t in a.lengths]
    if 'train' in a.work:
      x = tokens(a.train_length)
      work.append((f'train step, {a.train_length} tokens',
                   lambda: (torch_train(net, x, mask_id, a.seed), lladax_train(model, x, a.seed))))
    if 'sample' in a.work:
      p = tokens(a.prompt)
      name = f'sample, prompt {a.prompt} + {a.gen}, block {a.block}, {a.steps} steps'
      work.append((name, lambda: (torch_sample(net, p, mask_id, a.gen, a.block, a.steps),
                                  lladax_sample(model, p, a.gen, a.block, a.steps, a.seed))))
    for name, make in work:
      t_fn, x_fn = make()
      t_s, x_s = alternate(t_fn, x_fn, a.repeats)
      rows.append({'work': name, 'torch_s': t_s, 'lladax_s': x_s, 'ratio': x_s / t_s})
      print(f'{name}: torch {_fmt(t_s)}, lladax {_fmt(x_s)}, lladax/torch {x_s / t_s:.2f}',
            flush=True)
      if name.startswith('sample'):
        same = result['sample_identical'] = np.array_equal(t_fn().numpy(), np.asarray(x_fn()))
        print(f'  sampled tokens identical: {same}', flush=True)
  print(f'load average {os.getloadavg()[0]:.1f} at the end')
  print('\n| work | PyTorch | lladax | lladax / PyTorch |\n|---|---|---|---|')
  for r in rows:
    print(f"| {r['work']} | {_fmt(r['torch_s'])} | {_fmt(r['lladax_s'])} | {r['ratio']:.2f} |")
  return dict(result, rows=rows)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ints = lambda s: [int(x) for x in s.split(',')]
  p.add_argument('--lengths', type=ints, default=[512, 2048, 8192],
                 help='forward lengths, comma-separated')
  p.add_argument('--train-length', type=int, default=512)
  p.add_argument('--prompt', type=int, default=256)
  p.add_argument('--gen', type=int, default=64)
  p.add_argument('--block', type=int, default=32)
  p.add_argument('--steps', type=int, default=64)
  p.add_argument('--work', default=','.join(WORK), help=f'comma-separated subset of {WORK}')
  p.add_argument('--skip', default='', help='comma-separated work to leave out')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--d-model', type=int, default=512)
  p.add_argument('--heads', type=int, default=8)
  p.add_argument('--layers', type=int, default=8)
  p.add_argument('--mlp', type=int, default=1408)
  p.add_argument('--vocab', type=int, default=32000)
  p.add_argument('--kernel', default='', help='lladax attention kernel (default: the saved one)')
  p.add_argument('--kernel-option', action='append', default=[],
                 help="the kernel's option as name=value, repeatable")
  p.add_argument('--remat', default='none',
                 help="lladax remat policy ('none': the issue's model fits without one; '' keeps "
                      'the saved one)')
  p.add_argument('--threads', type=int, default=0, help='torch threads (0: its default)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--torch-model', default=DEFAULT_TORCH_MODEL)
  a = p.parse_args(argv)
  skip = set(filter(None, a.skip.split(',')))
  a.work = [w for w in a.work.split(',') if w and w not in skip]
  bad = [w for w in a.work + list(skip) if w not in WORK]
  if bad:
    raise ConfigError(f'unknown work {", ".join(bad)}; choose from {", ".join(WORK)}.')
  return a


def main(argv=None):
  run(parse_args(argv))


if __name__ == '__main__':
  main()
