"""The default kernel, 'auto': what it picks per platform, dtype and mesh, and that it is exactly
the kernel it picks."""
import importlib

import numpy as np
import pytest

from lladax.attention import auto, sharded
from lladax.model_config import ModelConfig
from tests.attention_layouts import layouts
from tests.test_attention_kernels import operands, out_and_grads


def test_models_default_to_auto():
  assert ModelConfig().attention_kernel == 'auto'


@pytest.mark.parametrize('platform,dtype,context,want', [
    ('cpu', 'float32', 1, 'blockwise'),
    ('cpu', 'bfloat16', 4, 'ring(blockwise)'),
    ('tpu', 'bfloat16', 1, 'splash'),
    ('tpu', 'float32', 8, 'ring(splash)'),
    ('tpu', 'float16', 1, 'blockwise'),     # Mosaic cannot load float16 tiles
    ('tpu', 'float16', 8, 'ring(blockwise)'),
    ('gpu', 'float16', 1, 'flash_gpu'),
    ('gpu', 'bfloat16', 2, 'ring(flash_gpu)'),
])
def test_auto_picks_by_platform_dtype_and_context(platform, dtype, context, want):
  assert auto.resolve(platform, dtype, context) == want


def test_auto_on_cpu_is_blockwise_bit_for_bit():
  t = 72
  q, k, v, ct = operands(3, 2, t, t, 4, 2)
  for _, seg in layouts(t, 4, seed=2):
    want = out_and_grads('blockwise', q, k, v, seg, seg, ct, block_q=32, block_kv=16)
    got = out_and_grads('auto', q, k, v, seg, seg, ct, block_q=32, block_kv=16)
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1], want[1]):
      np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize('platform,module', [('tpu', 'splash'), ('gpu', 'flash_gpu')])
def test_auto_runs_the_platform_kernel_when_compiling_for_it(platform, module, monkeypatch):
  # What a TPU or GPU compile traces, on this CPU: the platform's Pallas kernel (in interpret
  # mode), against the reference.
  kernel = importlib.import_module(f'lladax.attention.{module}')
  monkeypatch.setattr(sharded, 'platform', lambda: platform)
  monkeypatch.setattr(kernel, 'use_interpret', lambda interpret=None: True)
  calls = []
  real = kernel.attention_local
  monkeypatch.setattr(kernel, 'attention_local',
                      lambda *a, **kw: calls.append(1) or real(*a, **kw))
  t = 128
  q, k, v, ct = operands(4, 1, t, t, 2, 2)
  seg = np.repeat(np.array([[1, 1, 2, 0]], np.int32), t // 4, axis=1)
  want = out_and_grads('reference', q, k, v, seg, seg, ct)
  # Options unique to each case: out_and_grads keeps one trace per kernel and options.
  got = out_and_grads('auto', q, k, v, seg, seg, ct, block_q=128, block_kv=128 + len(module))
  assert calls, f'auto did not run {module} for a {platform} compile'
  np.testing.assert_allclose(got[0], want[0], atol=2e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, atol=2e-4)
