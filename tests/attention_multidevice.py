"""Sharded attention kernels against the dense reference on 8 simulated CPU devices.

Run by tests/test_attention_sharded.py in a subprocess, because the device count must be fixed
before jax is imported:

  python tests/attention_multidevice.py GROUP [GROUP ...]

Prints one JSON line per check (kernel, mesh, layout, largest forward and gradient errors,
whether everything was finite) and exits 0; the test decides what passes.
"""
import json
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lladax.attention import attention, sharded
from lladax.sharding import AXES
from tests.attention_layouts import layouts

D = 16


def make_mesh(sizes: dict, explicit: bool = False):
  shape = tuple(sizes.get(a, 1) for a in AXES)
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh(shape, AXES, axis_types=(kind,) * len(AXES),
                       devices=jax.devices()[:int(np.prod(shape))])


def loss_and_grads(fn, q, k, v, seg, ct):
  def loss(q, k, v):
    out = fn(q, k, v, seg)
    return jnp.sum(out * ct), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


# One jitted oracle for every check, so that each shape compiles once.
REFERENCE = jax.jit(lambda *a: loss_and_grads(
    lambda q, k, v, s: attention(q, k, v, s, kernel='reference'), *a))


def check(name, kernel, mesh_sizes, *, t=128, h=4, kh=4, explicit=False, seed=0, **options):
  mesh = make_mesh(mesh_sizes, explicit)
  shards = mesh_sizes.get('context', 1)
  rng = np.random.default_rng(seed)
  run = jax.jit(lambda *a: loss_and_grads(
      lambda q, k, v, s: attention(q, k, v, s, kernel=kernel, **options), *a))
  for label, seg in layouts(t, shards, seed):
    b = seg.shape[0]
    q = rng.normal(size=(b, t, h, D)).astype(np.float32)
    k = rng.normal(size=(b, t, kh, D)).astype(np.float32)
    v = rng.normal(size=(b, t, kh, D)).astype(np.float32)
    ct = rng.normal(size=(b, t, h, D)).astype(np.float32)
    want_out, want_grads = REFERENCE(q, k, v, seg, ct)
    with jax.set_mesh(mesh):
      # Operands arrive laid out as the model lays out activations.
      lay = sharded.layout(jnp.asarray(q), jnp.asarray(k))
      qspec, sspec = lay.spec(True, True), lay.spec(True, False)
      kvspec = qspec if lay.repeat_kv == 1 else P(*qspec[:2], None, None)
      put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
      args = (put(q, qspec), put(k, kvspec), put(v, kvspec), put(seg, sspec), put(ct, qspec))
      got_out, got_grads = run(*args)
      got_out, got_grads = np.asarray(got_out), [np.asarray(g) for g in got_grads]
    errs = [float(np.max(np.abs(got_out - want_out)))]
    errs += [float(np.max(np.abs(g - w))) for g, w in zip(got_grads, want_grads)]
    finite = bool(np.isfinite(got_out).all() and all(np.isfinite(g).all() for g in got_grads))
    print(json.dumps(dict(check=name, kernel=kernel, mesh=mesh_sizes, layout=label,
                          spec=str(qspec), fwd=errs[0], dq=errs[1], dk=errs[2], dv=errs[3],
                          finite=finite)), flush=True)


def ring():
  for n in (2, 4, 8):
    check(f'ring context={n}', 'ring', {'context': n}, block_q=16, block_kv=32)
  check('ring fsdp=2 x context=4, GQA', 'ring', {'fsdp': 2, 'context': 4}, kh=2,
        block_q=32, block_kv=16)
  check('ring data=2 x context=2 x tensor=2, GQA', 'ring',
        {'data': 2, 'context': 2, 'tensor': 2}, kh=2)
  check('ring context=2 x tensor=2, one kv head (repeated)', 'ring',
        {'context': 2, 'tensor': 2}, kh=1)
  check('ring context=4, explicit axes', 'ring', {'context': 4}, explicit=True)
  refused('ring', {'context': 8}, t=100)


def refused(kernel, mesh_sizes, *, t):
  """A sequence the context axis does not divide is refused with a message, not replicated."""
  x = jnp.zeros((2, t, 4, D))
  seg = jnp.ones((2, t), jnp.int32)
  with jax.set_mesh(make_mesh(mesh_sizes)):
    try:
      jax.jit(lambda x, s: attention(x, x, x, s, kernel=kernel))(x, seg)
      error = None
    except ValueError as e:
      error = str(e)
  print(json.dumps(dict(check=f'{kernel} refuses length {t}', mesh=mesh_sizes, error=error)),
        flush=True)


def gather():
  check('all_gather fsdp=2 x context=4, GQA', 'all_gather', {'fsdp': 2, 'context': 4}, kh=2,
        block_q=32, block_kv=32)
  check('splash fsdp=2 x context=2 x tensor=2, GQA', 'splash',
        {'fsdp': 2, 'context': 2, 'tensor': 2}, t=256, kh=2, block_q=128, block_kv=128)
  check('ring with splash steps, context=2 x tensor=2, GQA', 'ring',
        {'context': 2, 'tensor': 2}, t=256, kh=2, step_kernel='splash', block_q=128,
        block_kv=128)


def flash_gpu():
  """The Pallas GPU kernel (interpreted here): as the ring's step, inside all_gather, and alone."""
  check('ring with flash_gpu steps, context=4, GQA', 'ring', {'context': 4}, t=96, kh=2,
        step_kernel='flash_gpu', block_q=16, block_kv=16)
  check('ring with flash_gpu steps, context=2 x tensor=2, one kv head', 'ring',
        {'context': 2, 'tensor': 2}, t=96, kh=1, step_kernel='flash_gpu', block_q=32,
        block_kv=16)
  check('all_gather with flash_gpu, fsdp=2 x context=2', 'all_gather', {'fsdp': 2, 'context': 2},
        t=96, kh=2, inner='flash_gpu', block_q=16, block_kv=32)


def remat():
  """The ring (blockwise and splash steps) through the model under each remat policy: how many
  attention forwards its gradient runs, and how far its gradients are from no remat."""
  # pylint: disable=import-outside-toplevel
  from dataclasses import replace

  from lladax import sharding
  from tests.helpers import tiny_config
  from tests.remat_checks import attention_forwards, gradients, largest_difference
  mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1, context=2), jax.devices()[:2])
  for options in ((), ('step_kernel=splash',)):
    cfg = tiny_config(n_layers=2, attention_kernel='ring', attention_options=options)
    with jax.set_mesh(mesh):
      want = gradients(cfg)
      for policy in ('none', 'full', 'save_attention', 'save_qkv_attention'):
        c = replace(cfg, remat_policy=policy)
        print(json.dumps(dict(remat=policy, options=options, forwards=attention_forwards(c),
                              grads=largest_difference(gradients(c), want))), flush=True)


GROUPS = {'ring': ring, 'gather': gather, 'flash_gpu': flash_gpu, 'remat': remat}

if __name__ == '__main__':
  assert len(jax.devices()) == 8, jax.devices()
  for group in sys.argv[1:] or sorted(GROUPS):
    GROUPS[group]()
