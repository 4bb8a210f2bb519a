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
  # Two layers suffice to find the digits after 'key:' and copy them (0.14M parameters, ~0.1 CPU
  # seconds a step). Rows are exactly BOS + the 33-byte prompt + two digits + two EOS: the answer
  # is the 4-token block the sampler fills, and half of what the loss scores is digits (at 48
  # bytes, one token in seven): with a 3e-3 learning rate the needle is found in a few hundred
  # steps where 48-byte rows took 600 at four times the cost a step.
  c.model = presets.tiny_model(d_model=64, n_layers=2, mlp_hidden_size=192,
                               max_sequence_length=38)
  c.data.update(source='retrieval', needle='key', n_pairs=4, seq_len=38, batch_size=64)
  c.train.update(steps=700, log_every=100, objective='sft')
  c.optim.update(learning_rate=3e-3, warmup_steps=20, schedule='cosine', decay_steps=680,
                 weight_decay=0.01)
  # The answer is two digits then EOS padding: one block of 4 tokens, one token per step.
  c.sample.update(gen_length=4, block_length=4, steps=4, temperature=0.0)
  c.demo_eval_examples = 256   # fresh records the sampler answers after training
  return c
