"""The built-in demo: train a tiny LLaDA to find a needle among key-value pairs, then sample.

  python -m lladax.main --config configs/demo.py

Records look like "q:38 key:52 c:05 x:71 d:94 | key:" -> "52": the needle "key" hides at a random
depth among four distractor pairs. Training is LLaDA's SFT objective (the prompt is never masked,
EOS padding counts as answer); evaluation decodes the answer of fresh records with the LLaDA
sampler and reports exact accuracy against the 20% of copying a random number from the context.
"""
from lladax import presets


def get_config():
  c = presets.base('demo')
  c.workdir = '/tmp/lladax_demo'
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(max_sequence_length=48)
  c.data.update(source='retrieval', needle='key', n_pairs=4, seq_len=48, batch_size=64)
  c.train.update(steps=600, log_every=50, objective='sft')
  c.optim.update(learning_rate=1e-3, warmup_steps=50, schedule='cosine', decay_steps=550,
                 weight_decay=0.01)
  # The answer is two digits then EOS padding: one block of 4 tokens, one token per step.
  c.sample.update(gen_length=4, block_length=4, steps=4, temperature=0.0)
  c.demo_eval_examples = 256   # fresh records the sampler answers after training
  return c
