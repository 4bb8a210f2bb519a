"""Shared tiny shapes, NumPy references written from the documented architecture, and the CLI."""
import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np

from lladax.model_config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
  base = dict(vocab_size=67, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=48,
              max_sequence_length=16, rope_theta=10000.0, mask_token_id=66, eos_token_id=65,
              pad_token_id=65, bos_token_id=64, eot_token_id=None, param_dtype='float32',
              dtype='float32', remat_policy='none')
  base.update(overrides)
  return ModelConfig(**base)


def np_rms_norm(x, w, eps):
  x = x.astype(np.float64)
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_rope(x, positions, theta):
  """x [B, T, H, D]: rotate-half RoPE, written out per dimension pair."""
  d = x.shape[-1]
  half = d // 2
  out = np.empty_like(x, dtype=np.float64)
  for j in range(half):
    freq = theta ** (-2.0 * j / d)
    ang = positions[..., None].astype(np.float64) * freq  # [B, T, 1]
    a, b = x[..., j], x[..., j + half]
    out[..., j] = a * np.cos(ang) - b * np.sin(ang)
    out[..., j + half] = b * np.cos(ang) + a * np.sin(ang)
  return out


def np_attention(q, k, v, seg):
  """Loops over rows so that the segment rule is spelled out, not vectorised."""
  b, t, h, d = q.shape
  group = h // k.shape[2]
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for ti in range(t):
      keys = [s for s in range(t) if seg[bi, s] == seg[bi, ti] and seg[bi, s] != 0]
      if not keys:
        continue
      for hi in range(h):
        kh = hi // group
        scores = np.array([q[bi, ti, hi] @ k[bi, s, kh] for s in keys]) / np.sqrt(d)
        p = np.exp(scores - scores.max())
        p /= p.sum()
        out[bi, ti, hi] = sum(pi * v[bi, s, kh] for pi, s in zip(p, keys))
  return out


def np_block(p, x, positions, seg, cfg):
  """One LLaDA block in float64 NumPy from the documented order of operations."""
  h = np_rms_norm(x, p['attn_norm'], cfg.rms_norm_eps)
  q = np.einsum('btd,dhk->bthk', h, p['q_proj'])
  k = np.einsum('btd,dhk->bthk', h, p['k_proj'])
  v = np.einsum('btd,dhk->bthk', h, p['v_proj'])
  q, k = np_rope(q, positions, cfg.rope_theta), np_rope(k, positions, cfg.rope_theta)
  o = np_attention(q, k, v, seg)
  x = x + np.einsum('bthk,hkd->btd', o, p['attn_out'])
  h = np_rms_norm(x, p['ff_norm'], cfg.rms_norm_eps)
  g = h @ p['ff_proj']
  silu = g / (1 + np.exp(-g))
  return x + (silu * (h @ p['up_proj'])) @ p['ff_out']


def replace(cfg, **kw):
  return dataclasses.replace(cfg, **kw)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_module(*parts: str):
  """A Python file of this checkout (a recipe in configs/, a script in docs/) as a module."""
  path = os.path.join(ROOT, *parts)
  spec = importlib.util.spec_from_file_location(os.path.splitext(parts[-1])[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_lladax(*args, check=True, timeout=600):
  """python -m lladax.main ARGS from the checkout, as a user runs it; fails with its output."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-m', 'lladax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode:
    raise AssertionError(f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc
