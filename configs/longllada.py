"""LongLLaDA: training-free context extension of LLaDA-8B by NTK scaling of the RoPE base.

The base is multiplied by lambda = b^-1 (T_target / 2pi)^(d / d_crit), rounded up as the paper
did: 4 / 14 / 31 / 55 for 8K / 16K / 24K / 32K (d_crit = 64 for LLaDA's b = 5e5, d = 128). The
paper found retrieval holds to about 24K (6x the trained 4K) and fails beyond.

  python -m lladax.main --config configs/longllada.py --config.job=describe
  python -m lladax.main --config configs/longllada.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.sample.prompt="..." [--config.rope.target_length=16384]
"""
from lladax import presets


def get_config():
  c = presets.base('generate')
  c.model.update(dtype='bfloat16', remat_policy='none')  # LLaDA-8B shape from presets.base
  c.rope.update(rule='ntk', target_length=32768, round_lambda=True)
  c.data.seq_len = 32768
  # LongLLaDA's NIAH decoding: 32 tokens in one block of 32 steps, greedy.
  c.sample.update(gen_length=32, block_length=32, steps=32, temperature=0.0)
  return c
