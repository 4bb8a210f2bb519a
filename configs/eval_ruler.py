"""RULER on a checkpoint, by default as LongLLaDA ran it (OpenCompass 0.4.2's RULER: 13 tasks at
4K, 8K and 16K tokens of cl100k_base, 100 samples each, no answer turn; gen 64, block 64, 64 steps;
float16). The papers' data files are local (nothing is downloaded):

  python -m lladax.main --config configs/eval_ruler.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.workdir=/tmp/ruler --config.ruler.count_tokenizer=/data/cl100k_base.tiktoken \\
      --config.ruler.essay=/data/ruler/PaulGrahamEssays.jsonl \\
      --config.ruler.squad=/data/ruler/dev-v2.0.json \\
      --config.ruler.hotpotqa=/data/ruler/hotpotqa.json
  # UltraLLaDA's (4K-32K, the answer turn ending the prompt with '\\n\\n'):
  ...  --config.ruler.protocol=ultrallada
  # UltraLLaDA's appendix length:
  ...  --config.ruler.protocol=ultrallada --config.ruler.lengths='(49152,)'
  # lladax's own reading (lengths in the model's tokens, bfloat16):
  ...  --config.ruler.protocol=lladax --config.model.dtype=bfloat16 \\
       --config.model.param_dtype=bfloat16 [--config.ruler.essay='/data/essays/*.txt']

Without the SQuAD / HotpotQA files the run leaves qa_1 / qa_2 out, says so, and names its average
avg_11_tasks (not the papers' Avg). Writes ruler_results.json / .csv and ruler.png in the workdir;
a killed run resumes from ruler_cells.jsonl. Decoding lengths are config.ruler's; config.sample
gives temperature, remasking, cfg and suppression. A setting that differs from the chosen paper's
is recorded under `deviations` in the results.
"""
from lladax import plan, presets
from lladax.evals import eval_settings, ruler


def get_config():
  c = presets.base('eval_ruler')
  c.workdir = '/tmp/lladax_eval_ruler'
  # The papers' wrapper loads LLaDA in float16 (protocol lladax: bfloat16).
  c.model.update(dtype='float16', param_dtype='float16')
  c.sample.update(gen_length=64, block_length=64, steps=64, temperature=0.0)
  c.eval = presets.section(eval_settings.EvalConfig)
  c.ruler = presets.section(ruler.RulerConfig)
  # --config.job=plan compiles this job's model calls at its longest inputs on one TPU chip.
  c.plan = presets.section(plan.PlanConfig, topology='v5p:2x2x1')
  return c
