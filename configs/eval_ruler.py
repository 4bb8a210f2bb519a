"""RULER on a checkpoint: the 11 tasks that need no data, generated at each length with the
model's tokenizer, plus qa_1 / qa_2 when SQuAD / HotpotQA files are given.

  python -m lladax.main --config configs/eval_ruler.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.workdir=/tmp/ruler --config.ruler.essay='/data/PaulGrahamEssays/*.txt' \\
      [--config.ruler.squad=/data/squad/dev-v2.0.json] \\
      [--config.ruler.hotpotqa=/data/hotpotqa/hotpot_dev_distractor_v1.json]
  # UltraLLaDA's lengths:
  ...  --config.ruler.lengths='(4096,8192,16384,32768)'

Writes ruler_results.json / .csv and ruler.png in the workdir; a killed run resumes from
ruler_cells.jsonl. Decoding (gen 64, block 64, steps 64 as LongLLaDA) is config.ruler's;
config.sample gives temperature, remasking, cfg and suppression.
"""
from lladax import presets
from lladax.evals import ruler, runner


def get_config():
  c = presets.base('eval_ruler')
  c.workdir = '/tmp/lladax_eval_ruler'
  c.model.update(dtype='bfloat16', param_dtype='bfloat16')
  c.sample.update(gen_length=64, block_length=64, steps=64, temperature=0.0)
  c.eval = presets.section(runner.EvalConfig)
  c.ruler = presets.section(ruler.RulerConfig)
  return c
