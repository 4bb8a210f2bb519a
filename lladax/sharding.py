"""The device mesh and the logical-axis rules that map the model's named axes onto it.

Mesh axes (outermost first):
  data     pure data parallelism (replicas; across slices over DCN)
  fsdp     data parallelism with parameters and optimizer state sharded (ZeRO-3 style)
  context  the sequence dimension (context parallelism: ring or all-gather attention)
  tensor   attention heads and MLP hidden units (tensor parallelism)
Activations [batch, length, ...] are laid out batch over (data, fsdp), length over context.
"""
from __future__ import annotations

AXES = ('data', 'fsdp', 'context', 'tensor')
BATCH_AXES = ('data', 'fsdp')
CONTEXT_AXIS = 'context'
TENSOR_AXIS = 'tensor'
