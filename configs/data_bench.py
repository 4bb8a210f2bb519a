"""Data pipeline benchmark: packed tokens per second per host for 64K and 128K rows, for each
tokenizer kind, beside the per-host rate the UltraLLaDA recipe consumes (offline: Python's own
standard library is the corpus).

  python -m lladax.main --config configs/data_bench.py
  python -m lladax.main --config configs/data_bench.py --config.pipeline.packing=eod \
      --config.bench.seconds=10 --config.workdir=/tmp/data_bench
"""
import ml_collections

from lladax import presets
from lladax.data import bench, pipeline


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'data_bench'
  c.workdir = ''   # where data_bench.json goes; '' writes nothing
  c.pipeline = presets.section(pipeline.PipelineConfig, sources=('text:{stdlib}/**/*.py',),
                               batch_size=1)
  c.bench = presets.section(bench.BenchConfig)
  return c
