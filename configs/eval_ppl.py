"""Perplexity against context length on a local text, with LongLLaDA's and LLaDA's estimators.

  python -m lladax.main --config configs/eval_ppl.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.workdir=/tmp/ppl --config.ppl.text=/data/gov_report_001.txt
  # UltraLLaDA-style, to 128K on a long book, every 16th chunk:
  ...  --config.ppl.text='/data/pg19/test/*.txt' --config.ppl.chunk_stride=16 \\
       --config.ppl.lengths='(4096,8192,16384,32768,65536,131072)'

Writes ppl_results.json and ppl.png (perplexity against length) in the workdir; a killed run
resumes from ppl_cells.jsonl. config.eval.batch_size is the rows per forward pass (the 8 Monte
Carlo maskings of a chunk fit one batch at short lengths).
"""
from lladax import plan, presets
from lladax.evals import eval_settings, perplexity


def get_config():
  c = presets.base('eval_ppl')
  c.workdir = '/tmp/lladax_eval_ppl'
  c.model.update(dtype='bfloat16', param_dtype='bfloat16')   # LongLLaDA scored in bf16
  c.eval = presets.section(eval_settings.EvalConfig, batch_size=8)
  c.ppl = presets.section(perplexity.PplConfig)
  # --config.job=plan compiles this job's model calls at its longest inputs on one TPU chip.
  c.plan = presets.section(plan.PlanConfig, topology='v5p:2x2x1')
  return c
