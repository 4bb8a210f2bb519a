"""LongBench on a checkpoint, from a local folder of LongBench's .jsonl files (no download).

  python -m lladax.main --config configs/eval_longbench.py --config.checkpoint=/ckpt/llada-8b \\
      --config.workdir=/tmp/longbench --config.longbench.data_dir=/data/LongBench/data
  # LongLLaDA's "8k" setting / UltraLLaDA's 16K, a few datasets:
  ...  --config.longbench.max_length=7500
  ...  --config.longbench.max_length=16000 --config.longbench.datasets='("hotpotqa","multi_news")'

Writes longbench_results.json / .csv in the workdir; a killed run resumes from
longbench_cells.jsonl. Output lengths are each dataset's (rounded up to block 64, steps 512 capped
at it, as LongLLaDA); config.sample gives temperature, remasking, cfg and suppression.
"""
from lladax import presets
from lladax.evals import longbench, runner


def get_config():
  c = presets.base('eval_longbench')
  c.workdir = '/tmp/lladax_eval_longbench'
  c.model.update(dtype='bfloat16', param_dtype='bfloat16')
  c.sample.update(gen_length=64, block_length=64, steps=64, temperature=0.0)
  c.eval = presets.section(runner.EvalConfig)
  c.longbench = presets.section(longbench.LongBenchConfig)
  return c
