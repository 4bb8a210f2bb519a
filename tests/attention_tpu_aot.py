"""Ahead-of-time compilation of the attention kernels for a TPU topology, on a CPU host.

Run by tests/test_attention_sharded.py in a subprocess (libtpu must be installed):

  python tests/attention_tpu_aot.py

Checks what interpret mode on CPU cannot: that splash is chosen in its compiled (Mosaic) form
when the mesh is made of TPU devices, and that splash, the ring with splash steps and the
blockwise ring all lower and compile for TPU with heads, sequence and batch sharded. Prints one
JSON line per kernel, or one line saying why no TPU topology could be built.
"""
import json
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Another process on this host may hold libtpu's lock; compiling needs no exclusive chip access.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lladax.attention import attention
from lladax.sharding import AXES

CASES = [('splash', {}), ('ring', {'step_kernel': 'splash'}), ('ring', {'block_q': 256})]


def main():
  try:
    devices = np.array(topologies.get_topology_desc(platform='tpu',
                                                    topology_name='v5p:2x2x1').devices)
  except Exception as e:  # pylint: disable=broad-except
    print(json.dumps(dict(unavailable=f'{type(e).__name__}: {e}'[:500])))
    return
  mesh = jax.sharding.Mesh(devices.reshape(1, 1, 2, 2), AXES, axis_types=(AxisType.Auto,) * 4)
  b, t, h, kh, d = 2, 1024, 4, 2, 128
  qspec = NamedSharding(mesh, P(('data', 'fsdp'), 'context', 'tensor', None))
  sspec = NamedSharding(mesh, P(('data', 'fsdp'), 'context'))
  q = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16, sharding=qspec)
  kv = jax.ShapeDtypeStruct((b, t, kh, d), jnp.bfloat16, sharding=qspec)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=sspec)
  for kernel, options in CASES:
    def loss(q, k, v, seg, kernel=kernel, options=options):
      return jnp.sum(attention(q, k, v, seg, kernel=kernel, **options).astype(jnp.float32))
    with jax.set_mesh(mesh):
      compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
    text = compiled.as_text()
    print(json.dumps(dict(kernel=kernel, options=options, mosaic='tpu_custom_call' in text,
                          ring='collective-permute' in text, gather='all-gather' in text)),
          flush=True)


if __name__ == '__main__':
  main()
