"""The built-in demo: train a tiny LLaDA to retrieve values from a key-value context, then sample.

  python -m lladax.main --config configs/demo.py

Records look like "q:38 c:05 x:71 d:94 | x:" -> "71". Training is LLaDA's SFT objective (the
prompt is never masked); evaluation decodes the answer with the LLaDA sampler and reports exact
accuracy against the 1/n_pairs of copying a random value from the context.
"""
from lladax import presets


def get_config():
  c = presets.base('demo')
  c.workdir = '/tmp/lladax_demo'
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(max_sequence_length=32)
  c.data.update(source='retrieval', n_pairs=4, seq_len=32, batch_size=64)
  c.train.update(steps=1500, log_every=50, objective='sft')
  c.optim.update(learning_rate=1e-3, warmup_steps=100, schedule='cosine', decay_steps=1400,
                 weight_decay=0.01)
  # The answer is two digits then EOS padding: one block of 4 tokens, one token per step.
  c.sample.update(gen_length=4, block_length=4, steps=4, temperature=0.0)
  c.demo_eval_examples = 256
  return c
