"""Rematerialisation policies by name: what a scanned block keeps for its backward pass."""
from __future__ import annotations

import jax

# Names tagged with jax.ad_checkpoint.checkpoint_name inside the block.
QKV = ('query_proj', 'key_proj', 'value_proj')


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
  raise ValueError(f'unknown remat policy {policy!r}')
