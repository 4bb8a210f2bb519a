"""Analytic FLOP counts. Attention is bidirectional, so nothing is halved for causality."""
from __future__ import annotations

from lladax.model_config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in a matmul per token (the embedding lookup does not)."""
  embed = cfg.vocab_size * cfg.d_model
  return cfg.num_params() - embed * (0 if cfg.weight_tying else 1)


def forward_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
  """Forward FLOPs per token: 2 per weight, and 4 * S * n_heads * head_dim per layer for QK^T and PV."""
  weights = 2.0 * matmul_params(cfg)
  attention = 4.0 * seq_len * cfg.n_heads * cfg.head_dim * cfg.n_layers
  return {'weights': weights, 'attention': attention, 'total': weights + attention}


def train_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward + backward (3x forward); rematerialisation is not counted (the MFU convention)."""
  return 3.0 * forward_per_token(cfg, seq_len)['total']
