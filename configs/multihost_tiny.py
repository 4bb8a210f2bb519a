"""A tiny LLaDA trained as a multi-host job: Grain pipeline, FSDP x ring-attention context axis.

On one machine, as two hosts of four CPU devices each (see README, "Multi-host"):

  python -m lladax.launch_local --processes 2 --devices 4 -- \
      --config configs/multihost_tiny.py --config.workdir=/tmp/mh

The same recipe on one process of eight devices gives the same losses: the batches are drawn
from config.pipeline.shards document streams, however many processes read them.
"""
from lladax import presets, sharding


def get_config():
  c = presets.base('train')
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(d_model=64, n_layers=2, mlp_hidden_size=128,
                               attention_kernel='ring')
  c.data.update(source='pipeline', seq_len=64, batch_size=8)
  c.pipeline = presets.section(presets.pipeline_config(), sources=('text:{stdlib}/email/*.py',),
                               seq_len=64, read_threads=1, log_every=0, shards=2)
  c.mesh = presets.section(sharding.MeshConfig, fsdp=-1, context=2)
  c.train.update(steps=20, log_every=1, checkpoint_every=10, objective='pretrain',
                 tensorboard=False)
  c.optim.update(learning_rate=1e-3, warmup_steps=5)
  return c
