"""A ~0.9M-parameter LLaDA trained for a few steps on Python's own library source (offline).

  python -m lladax.main --config configs/tiny.py --config.workdir=/tmp/tiny
"""
from lladax import presets


def get_config():
  c = presets.base('train')
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model()
  c.data.update(source='text_files', path='{stdlib}/json/*.py', seq_len=64, batch_size=8)
  c.train.update(steps=20, log_every=5, objective='pretrain')
  c.optim.update(learning_rate=1e-3, warmup_steps=5)
  c.sample.update(gen_length=16, block_length=8, steps=8)
  c.sample.prompt = 'import json\n'
  return c
