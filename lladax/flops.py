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


# Dense bf16 FLOP/s per device of the GPUs people train on (vendor datasheets, SXM parts).
GPU_PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'B200': 2250e12, 'A100': 312e12}


def peak_flops(device) -> float | None:
  """The device's peak bf16 FLOP/s, or None when unknown (CPUs): MFU is then not reported."""
  if device.platform == 'tpu':
    from lladax import tpu_chips  # pylint: disable=import-outside-toplevel
    for chip in tpu_chips.CHIPS.values():
      if device.device_kind.startswith(chip.device_kind):
        return chip.peak_bf16_flops
    return None
  for name, peak in GPU_PEAK_BF16.items():
    if name in getattr(device, 'device_kind', ''):
      return peak
  return None
