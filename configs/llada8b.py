"""LLaDA-8B (Base, Instruct and 1.5 share this shape): describes the network and its RoPE.

  python -m lladax.main --config configs/llada8b.py
"""
from lladax import presets


def get_config():
  c = presets.base('describe')
  # presets.base already holds LLaDA-8B's shape; spelled out here so the recipe reads alone.
  c.model.update(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288,
                 max_sequence_length=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                 mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)
  c.data.seq_len = 4096
  return c
