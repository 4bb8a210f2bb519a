"""How often a model's gradient runs the attention forward, and its gradients, per remat policy.

Shared by tests/test_remat.py (one device) and tests/attention_multidevice.py (the ring, on
simulated devices). The attention forward is counted as floating-point `reduce_max` equations: the
running row maximum of the online softmax, which no other part of the block, no attention backward and
no loss used here contains (splash's forward Pallas kernel has one too, its backward kernels
none). The jaxpr is pruned of dead code first, as XLA would, since partial evaluation under a
remat policy can leave an unused copy of a jitted forward behind.
"""
import jax
import jax.numpy as jnp
from flax import nnx
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr has no public home

from lladax import model as model_lib

TOKENS = jnp.array([[1, 2, 66, 4, 5, 6, 7, 8], [9, 10, 11, 66, 12, 13, 14, 15]])
SEGMENTS = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 2, 2]])


def _loss(cfg):
  graphdef, params = nnx.split(model_lib.init(cfg, seed=1), nnx.Param)

  def loss(p):
    # The hidden states, not the logits: a log-softmax over the vocabulary has a max of its own.
    return jnp.mean(nnx.merge(graphdef, p).hidden(TOKENS, segment_ids=SEGMENTS) ** 2)
  return loss, params


def _count(jaxpr, is_forward) -> int:
  """Forward equations whose results something uses (jaxpr-level DCE keeps a pallas_call whose
  outputs are all dead, as remat leaves one; XLA drops it)."""
  used = {v for v in [*(v for eqn in jaxpr.eqns for v in eqn.invars), *jaxpr.outvars]
          if isinstance(v, jax.extend.core.Var)}
  n = 0
  for eqn in jaxpr.eqns:
    n += is_forward(eqn) and any(v in used for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      n += _count(sub, is_forward)
  return n


def _online_softmax(eqn) -> bool:
  # Floating point only: blockwise also takes maxima of segment ids to classify its tiles.
  return (eqn.primitive.name == 'reduce_max'
          and jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating))


def _flash_gpu_forward(eqn) -> bool:
  # flash_gpu's kernels take row and segment maxima in the backward too: count its forward call.
  return eqn.primitive.name == 'pallas_call' and eqn.params.get('name') == 'lladax_flash_fwd'


def attention_forwards(cfg) -> int:
  """Attention forwards in the gradient's jaxpr, per layer body (a scan body counts once)."""
  loss, params = _loss(cfg)
  closed = jax.make_jaxpr(jax.grad(loss))(params)
  live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
  return _count(live, _flash_gpu_forward if cfg.attention_kernel == 'flash_gpu'
                else _online_softmax)


def gradients(cfg):
  loss, params = _loss(cfg)
  return jax.jit(jax.grad(loss))(params)


def largest_difference(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
