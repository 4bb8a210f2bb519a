"""Attention kernel benchmark: forward and forward+backward TFLOP/s and peak memory of each
kernel against sequence length, on the machine it runs on (LLaDA-8B's 32 heads of 128).

  python -m lladax.main --config configs/attention_bench.py
  python -m lladax.main --config configs/attention_bench.py --config.bench.max_seq_len=131072 \
      --config.bench.kernels='("blockwise","splash")' --config.workdir=/tmp/attention_bench
  # ring and all-gather context parallelism over 4 local devices:
  python -m lladax.main --config configs/attention_bench.py --config.bench.context=4

On CPU the sweep stops at 2048 tokens in float32 unless max_seq_len says otherwise; splash is
timed only on TPU and flash_gpu only on GPU:
  python -m lladax.main --config configs/attention_bench.py \
      --config.bench.kernels='("blockwise","flash_gpu")' --config.bench.max_seq_len=32768
"""
import ml_collections

from lladax import presets
from lladax.attention import bench


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'attention_bench'
  c.workdir = ''   # where attention_bench.json goes; '' writes nothing
  c.bench = presets.section(bench.BenchConfig)
  return c
