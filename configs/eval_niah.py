"""Needle in a haystack on a checkpoint, as LongLLaDA (default) or UltraLLaDA ran it: NeedleBench
"origin" (English) token for token, from NeedleBench's local files, lengths in cl100k_base.

  python -m lladax.main --config configs/eval_niah.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.workdir=/tmp/niah --config.niah.haystack=/data/needlebench/en_un_asr.jsonl \\
      --config.niah.needles=/data/needlebench/needles.jsonl \\
      --config.niah.count_tokenizer=/data/cl100k_base.tiktoken
  # UltraLLaDA's grid (8K-128K in 8K steps, steps 16):
  ...  --config.niah.protocol=ultrallada
  # LongLLaDA's NTK scaling (lambda 14 for 16K) applied to the checkpoint's base:
  ...  --config.rope.rule=ntk --config.rope.target_length=16384 --config.rope.round_lambda=True
  # lladax's own reading (any text, built-in needles, its template; see lladax/evals/niah.py):
  ...  --config.niah.protocol=lladax --config.niah.haystack='/data/PaulGrahamEssays/*.txt'

Writes niah_results.json / .csv and niah.png (length x depth heatmap) in the workdir; a killed
run resumes from niah_cells.jsonl. The network's shape comes from the checkpoint; config.model
only says how it runs (float16 as the papers' wrapper; another dtype is recorded as a deviation).
Decoding lengths and steps are config.niah's (the grid's); config.sample gives temperature,
remasking, cfg and suppression (the papers: LLaDA's defaults, greedy).
"""
from lladax import plan, presets
from lladax.evals import eval_settings, niah


def get_config():
  c = presets.base('eval_niah')
  c.workdir = '/tmp/lladax_eval_niah'
  c.model.update(dtype='float16', param_dtype='float16')
  c.sample.update(gen_length=32, block_length=32, steps=32, temperature=0.0)
  c.eval = presets.section(eval_settings.EvalConfig)
  c.niah = presets.section(niah.NiahConfig)
  # --config.job=plan compiles this job's model calls at its longest inputs on one TPU chip.
  c.plan = presets.section(plan.PlanConfig, topology='v5p:2x2x1')
  return c
