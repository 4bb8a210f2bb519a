"""LongBench on a checkpoint, from a local folder of LongBench's .jsonl files (no download), as
LongLLaDA (default) or UltraLLaDA ran it: OpenCompass 0.4.2's prompts, lengths and evaluators,
prompts cut to max_length tokens on the token ids (first and last halves).

  python -m lladax.main --config configs/eval_longbench.py --config.checkpoint=/ckpt/llada-8b \\
      --config.workdir=/tmp/longbench --config.longbench.data_dir=/data/LongBench/data
  # LongLLaDA's "4k" setting (the default is its "8k", 7500 tokens):
  ...  --config.longbench.max_length=3500
  # UltraLLaDA's 16K (max_length 16000):
  ...  --config.longbench.protocol=ultrallada
  # lladax's own reading of THUDM/LongBench (text-level truncation, pure-Python metrics):
  ...  --config.longbench.protocol=lladax --config.longbench.max_length=7500
  # a few datasets:
  ...  --config.longbench.datasets='("hotpotqa","multi_news")'

Writes longbench_results.json / .csv in the workdir; a killed run resumes from
longbench_cells.jsonl. Output lengths are each dataset's (rounded up to block 64, steps 512 capped
at it, as the papers' wrapper); config.sample gives temperature (0), remasking (low_confidence)
and cfg (0), the papers' values. The network runs in float16 as the papers' wrapper loaded it
(lladax's protocol runs bfloat16: add --config.model.dtype=bfloat16
--config.model.param_dtype=bfloat16 with protocol=lladax, or the difference is recorded as a
deviation). The papers' metrics need the `eval` extra: pip install 'lladax[eval]'.
"""
from lladax import plan, presets
from lladax.evals import eval_settings, longbench


def get_config():
  c = presets.base('eval_longbench')
  c.workdir = '/tmp/lladax_eval_longbench'
  c.model.update(dtype='float16', param_dtype='float16')
  c.sample.update(gen_length=64, block_length=64, steps=64, temperature=0.0)
  c.eval = presets.section(eval_settings.EvalConfig)
  c.longbench = presets.section(longbench.LongBenchConfig)
  # --config.job=plan compiles this job's model calls at its longest inputs on one TPU chip.
  c.plan = presets.section(plan.PlanConfig, topology='v5p:2x2x1')
  return c
