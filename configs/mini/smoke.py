"""configs/mini/ultra.py shrunk to seconds: every stage of the replay runs, nothing is learned.

  python -m lladax.main --config configs/mini/smoke.py --config.workdir=/tmp/mini_smoke

T = 128, a 2-layer model of width 32, 4 pre-training and 2 post-training steps, lengths 1T and
2T, depths 0/50/100, one needle draw, one seed; the tests run it (tests/test_replay.py).
"""
import importlib.util
import os


def _ultra():
  spec = importlib.util.spec_from_file_location(
      'mini_ultra', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ultra.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = _ultra().get_config()
  c.workdir = '/tmp/lladax_mini_smoke'
  c.model.update(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, max_sequence_length=128)
  c.data.update(seq_len=128, batch_size=4)
  c.pipeline.update(seq_len=128, batch_size=4)
  c.train.update(steps=4, log_every=2, checkpoint_every=4)
  c.optim.update(warmup_steps=1, decay_steps=4)
  c.replay.update(train_length=128, multiples=(1, 2), post_multiple=2, pre_documents=32,
                  post_documents=16, instruct_documents=16, instruct_prose_documents=8,
                  instruct_longest=0, instruct_steps=2, instruct_long_steps=2, prose_limit=40,
                  post_steps=2, post_batch_size=2, post_warmup_steps=1, seeds=(0,),
                  niah_depths=(0.0, 50.0, 100.0), niah_repeats=1,
                  ppl_mc_samples=2, ppl_chunk_stride=2, eval_batch_size=3, report_dir='')
  return c
