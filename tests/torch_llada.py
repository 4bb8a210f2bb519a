"""An independent PyTorch LLaDA (LLaDALlamaBlock) written from docs/LLADA.md, the tests' oracle.

Module names reproduce the Hugging Face state-dict keys (`model.transformer.wte.weight`, ...),
so a checkpoint directory loads with strict key matching and no mapping code shared with lladax.
Numerics follow PyTorch bf16 inference: RMSNorm statistics in float32, cast back, then times the
weight; rotate-half RoPE in float32 over physical positions 0..T-1; bidirectional SDPA; SwiGLU
with ff_proj as the SiLU gate and up_proj linear; logits in the model dtype.

Also writes tiny random checkpoints in the HF layout (sharded safetensors or .bin with an index).
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class RMSNorm(nn.Module):

  def __init__(self, d: int, eps: float):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(d))

  def forward(self, x):
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return normed.to(x.dtype) * self.weight


def rotate(x, theta: float):
  """x [B, H, T, hd]; float32 inside, x.dtype out."""
  t, hd = x.shape[-2], x.shape[-1]
  inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
  freqs = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
  emb = torch.cat([freqs, freqs], dim=-1)
  x32 = x.float()
  x1, x2 = x32[..., :hd // 2], x32[..., hd // 2:]
  rotated = torch.cat([-x2, x1], dim=-1)
  return (x32 * emb.cos() + rotated * emb.sin()).to(x.dtype)


class Block(nn.Module):

  def __init__(self, c: dict):
    super().__init__()
    d, h = c['d_model'], c['n_heads']
    kh = c.get('n_kv_heads') or h
    hd = d // h
    f = c['mlp_hidden_size']
    self.h, self.kh, self.hd, self.theta = h, kh, hd, c['rope_theta']
    self.attn_norm = RMSNorm(d, c['rms_norm_eps'])
    self.q_proj = nn.Linear(d, h * hd, bias=False)
    self.k_proj = nn.Linear(d, kh * hd, bias=False)
    self.v_proj = nn.Linear(d, kh * hd, bias=False)
    self.attn_out = nn.Linear(h * hd, d, bias=False)
    self.ff_norm = RMSNorm(d, c['rms_norm_eps'])
    self.ff_proj = nn.Linear(d, f, bias=False)
    self.up_proj = nn.Linear(d, f, bias=False)
    self.ff_out = nn.Linear(f, d, bias=False)

  def forward(self, x):
    b, t, d = x.shape
    h = self.attn_norm(x)
    q = self.q_proj(h).view(b, t, self.h, self.hd).transpose(1, 2)
    k = self.k_proj(h).view(b, t, self.kh, self.hd).transpose(1, 2)
    v = self.v_proj(h).view(b, t, self.kh, self.hd).transpose(1, 2)
    q, k = rotate(q, self.theta), rotate(k, self.theta)
    if self.kh != self.h:
      k = k.repeat_interleave(self.h // self.kh, dim=1)
      v = v.repeat_interleave(self.h // self.kh, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    x = x + self.attn_out(o.transpose(1, 2).reshape(b, t, d))
    h = self.ff_norm(x)
    return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDA(nn.Module):
  """Call with input_ids [B, T] for logits [B, T, embedding_size] in the model dtype."""

  def __init__(self, c: dict):
    super().__init__()
    self.c = c
    rows = c.get('embedding_size') or c['vocab_size']
    transformer = nn.ModuleDict({
        'wte': nn.Embedding(rows, c['d_model']),
        'blocks': nn.ModuleList(Block(c) for _ in range(c['n_layers'])),
        'ln_f': RMSNorm(c['d_model'], c['rms_norm_eps']),
    })
    if not c['weight_tying']:
      transformer['ff_out'] = nn.Linear(c['d_model'], rows, bias=False)
    self.model = nn.Module()
    self.model.transformer = transformer

  def forward(self, input_ids):
    tr = self.model.transformer
    x = tr['wte'](input_ids)
    for block in tr['blocks']:
      x = block(x)
    x = tr['ln_f'](x)
    return F.linear(x, tr['wte'].weight) if self.c['weight_tying'] else tr['ff_out'](x)


def tiny_config(**overrides) -> dict:
  """A LLaDA-8B config.json shrunk to test size; special ids inside the small vocabulary."""
  c = {
      'activation_type': 'silu', 'alibi': False, 'architectures': ['LLaDAModelLM'],
      'attention_layer_norm': False, 'bias_for_layer_norm': False, 'block_group_size': 1,
      'block_type': 'llama', 'd_model': 64, 'embedding_size': 300, 'eos_token_id': 281,
      'flash_attention': False, 'include_bias': False, 'include_qkv_bias': False,
      'input_emb_norm': False, 'layer_norm_type': 'rms', 'layer_norm_with_affine': True,
      'mask_token_id': 286, 'max_sequence_length': 32, 'mlp_hidden_size': 96, 'mlp_ratio': 4,
      'model_type': 'llada', 'multi_query_attention': None, 'n_heads': 4, 'n_kv_heads': 4,
      'n_layers': 3, 'pad_token_id': 281, 'rms_norm_eps': 1e-5, 'rope': True,
      'rope_full_precision': True, 'rope_theta': 10000.0, 'scale_logits': False,
      'torch_dtype': 'float32', 'vocab_size': 290, 'weight_tying': False,
  }
  c.update(overrides)
  return c


def random_model(c: dict, seed: int = 0) -> LLaDA:
  """Weights scaled so activations stay O(1); norm weights away from 1 so they matter."""
  torch.manual_seed(seed)
  model = LLaDA(c)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith('wte.weight'):
        p.normal_(0.0, 1.0)
      else:
        p.normal_(0.0, p.shape[1] ** -0.5)
  return model


def save_pretrained(model: LLaDA, directory: str, n_shards: int = 3,
                    dtype: torch.dtype = torch.float32, fmt: str = 'safetensors') -> None:
  """Writes config.json and the weights as `n_shards` files with an index (HF layout)."""
  os.makedirs(directory, exist_ok=True)
  state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
  names = list(state)
  groups = [names[i::n_shards] for i in range(n_shards)]
  prefix, ext = ('model', 'safetensors') if fmt == 'safetensors' else ('pytorch_model', 'bin')
  weight_map = {}
  for i, group in enumerate(groups):
    file = f'{prefix}-{i + 1:05d}-of-{n_shards:05d}.{ext}'
    part = {k: state[k] for k in group}
    if fmt == 'safetensors':
      save_file(part, os.path.join(directory, file), metadata={'format': 'pt'})
    else:
      torch.save(part, os.path.join(directory, file))
    weight_map.update({k: file for k in group})
  total = sum(v.numel() * v.element_size() for v in state.values())
  with open(os.path.join(directory, f'{prefix}.{ext}.index.json'), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f)
  c = dict(model.c, torch_dtype={torch.float32: 'float32', torch.bfloat16: 'bfloat16'}[dtype])
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(c, f, indent=2)


def load_local_directory(directory: str, dtype: torch.dtype = torch.float32) -> LLaDA:
  """Loads a HF-layout directory (safetensors, sharded or not) with strict key matching."""
  with open(os.path.join(directory, 'config.json')) as f:
    c = json.load(f)
  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = ['model.safetensors']
  state = {}
  for file in files:
    state.update(load_file(os.path.join(directory, file)))
  model = LLaDA(c)
  model.load_state_dict(state, strict=True)
  return model.to(dtype)
