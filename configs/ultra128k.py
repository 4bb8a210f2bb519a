"""UltraLLaDA: post-train LLaDA-8B-Base to a 128K context (arXiv 2510.10481).

Recipe (PAPERS.md section 3; [guess] marks what the paper does not state and we chose):
  - RoPE: diffusion-aware NTK. Bidirectional attention trains relative positions in
    [-(T-1), T-1], so spans count double: T_cap = 2 * 4096, T_Ecap = 2 * 131072, giving
    d_crit = 70 and base ~2.81e8 (lambda ~562). The paper's d_crit sweep preferred 73; set
    --config.rope.d_crit=73 to follow it.
  - Data: PG19-style books through the Grain pipeline, packed into rows with segment ids so
    documents never attend to each other ("adaptive attention mask").
  - Mesh: each row split over 8 chips with ring attention, rows over fsdp; the LM head and loss
    in 16 chunks; 2 microbatches. The plan job picks remat 'save_qkv_attention' for a v5p-128:
    65.0 GiB per chip, MFU ceiling 95.9% (README).
  - Loss: LLaDA's masked-diffusion objective, unchanged (1/p weighting, eps = 1e-3).
  - 600 steps of ~4M tokens: 32 rows x 131072 tokens = 4.19M tokens per step. [The paper packs
    64K rows; 128K rows keep the tokens per step and train the full window.]
  - AdamW, lr 2e-5 [guess], 30 warm-up steps [guess], constant [guess], weight decay 0.1 [guess],
    clip 1.0 [guess]; float32 master weights, bfloat16 compute; the scanned blocks keep q, k, v
    and the attention kernel's output and log-sum-exp and rerun the rest of the block.

  python -m lladax.main --config configs/ultra128k.py --config.checkpoint=/ckpt/llada-8b-base \\
      --config.pipeline.sources="('text:/data/pg19/train/*.txt',)" --config.workdir=gs://bucket/ultra128k
  python -m lladax.main --config configs/ultra128k.py --config.job=plan   # memory plan, v5p-128
  python -m lladax.main --config configs/ultra128k.py --config.job=plan --config.plan.topology=v4:4x4x4 \\
      --config.plan.meshes="('context=8,fsdp=-1','context=16,fsdp=-1')" --config.plan.microbatches="(4,8)"
  # v4-128: the plan picks context=16 and 8 microbatches (19.6 GiB of 32 per chip, MFU <= 95.9%):
  # train there with --config.mesh.context=16 --config.step.microbatches=8
"""
from lladax import plan, presets, sharding
from lladax.train import step as train_step


def get_config():
  c = presets.base('train')
  c.model.update(param_dtype='float32', dtype='bfloat16', remat_policy='save_qkv_attention')
  c.rope.update(rule='diffusion_ntk', target_length=131072)
  # PG19-style books through the Grain pipeline: documents packed into 128K rows with segment
  # ids (UltraLLaDA's adaptive mask); set the sources on the command line.
  c.data.update(source='pipeline', seq_len=131072, batch_size=32)
  c.pipeline = presets.section(presets.pipeline_config(), sources=(), seq_len=131072,
                               packing='segment', add_eos=True)
  c.train.update(steps=600, log_every=1, objective='pretrain', init='checkpoint')
  c.optim.update(learning_rate=2e-5, warmup_steps=30, schedule='constant', weight_decay=0.1,
                 clip_norm=1.0, b1=0.9, b2=0.95)
  c.sample.update(gen_length=32, block_length=32, steps=16)  # UltraLLaDA's NIAH decoding
  # Pods (64 chips): each 131072-token row split over 8 chips (ring attention), rows over the
  # other 8 (fsdp); weights over all 64. Every chip holds 65536 tokens whatever the split, so
  # the smallest context that leaves whole rows per chip costs least ICI. At 128K the attention
  # is 82% of the forward, so the remat policy decides the MFU ceiling: 'full' reruns it (75%),
  # the save_*attention policies keep its output and log-sum-exp (95%). The plan job compiles
  # the policies below and picks the best that fits with 10% headroom; on v5p-128 that is
  # save_qkv_attention with 2 microbatches (65.0 GiB of 95 per chip; 1 microbatch needs 106.7).
  c.model.attention_kernel = 'ring'
  c.mesh = presets.section(sharding.MeshConfig, fsdp=-1, context=8)
  c.step = presets.section(train_step.StepConfig, loss_chunks=16,  # 2 GiB of logits, not 33
                           microbatches=2)
  c.plan = presets.section(plan.PlanConfig, topology='v5p:4x4x4',
                           remat_policies=('save_qkv_attention', 'save_attention', 'full'))
  return c
