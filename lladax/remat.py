"""Rematerialisation policies by name: what a scanned block keeps for its backward pass."""
from __future__ import annotations

import jax

# Names tagged with jax.ad_checkpoint.checkpoint_name inside the block.
QKV = ('query_proj', 'key_proj', 'value_proj')
# The attention kernels' residuals, tagged in their custom VJPs' forward rules: the output and
# the row log-sum-exp. With both saved the backward needs no attention forward; without them
# every policy reruns it (the costliest part of a long-context block). Splash's own kernel
# tags both with the one name it takes, 'attention_residuals'.
ATTENTION = ('attention_out', 'attention_lse', 'attention_residuals')


def wrap(fn, policy: str):
  """fn wrapped with jax.checkpoint under the named policy ('none' returns fn unchanged)."""
  policies = jax.checkpoint_policies
  if policy == 'none':
    return fn
  if policy == 'full':
    return jax.checkpoint(fn, policy=policies.nothing_saveable)
  if policy == 'minimal':
    return jax.checkpoint(fn, policy=policies.checkpoint_dots_with_no_batch_dims)
  if policy == 'save_qkv_proj':
    return jax.checkpoint(fn, policy=policies.save_only_these_names(*QKV))
  if policy == 'save_qkv_context':
    return jax.checkpoint(fn, policy=policies.save_only_these_names(*QKV, 'context'))
  if policy == 'save_attention':
    return jax.checkpoint(fn, policy=policies.save_only_these_names(*ATTENTION))
  if policy == 'save_qkv_attention':
    return jax.checkpoint(fn, policy=policies.save_only_these_names(*QKV, *ATTENTION))
  raise ValueError(f'unknown remat policy {policy!r}')
