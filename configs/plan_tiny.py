"""A memory plan small enough for CI: a 16M-parameter LLaDA on a 4-chip TPU v5e slice.

Dimensions are multiples of what TPU tiles pad to (8 x 128), so the compiler's memory figures
are the arrays' own sizes.

Compiles ahead of time on a CPU host (needs libtpu: pip install "jax[tpu]==<jax version>").

  python -m lladax.main --config configs/plan_tiny.py
  python -m lladax.main --config configs/plan_tiny.py --config.plan.topology=v4:2x2x1
"""
from lladax import plan, presets, sharding


def get_config():
  c = presets.base('plan')
  c.tokenizer = presets.byte_tokenizer()
  c.model = presets.tiny_model(vocab_size=512, d_model=1024, n_layers=2, n_heads=8,
                               mlp_hidden_size=1024, max_sequence_length=1024, dtype='bfloat16',
                               remat_policy='full', attention_kernel='ring')
  c.data.update(source='text_files', path='{stdlib}/json/*.py', seq_len=1024, batch_size=8)
  c.mesh = presets.section(sharding.MeshConfig, fsdp=-1, context=2)
  c.plan = presets.section(plan.PlanConfig, topology='v5e:2x2', remat_policies=('full', 'none'),
                           meshes=('fsdp=-1,context=2', 'fsdp=-1,context=1'))
  return c
