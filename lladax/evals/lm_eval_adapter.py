"""lm-evaluation-harness driving a lladax checkpoint (optional: `pip install lm-eval`).

  loglikelihood          LLaDA's Monte Carlo bound (lladax.diffusion.log_likelihood) of the
                         continuation given the context; is_greedy by decoding the continuation's
                         length with the sampler, one token per step, and comparing
  loglikelihood_rolling  the same bound over consecutive windows, each given all text before it
                         (a bound, not an exact likelihood; LLaDA itself leaves this out)
  generate_until         the LLaDA sampler for max_gen_toks tokens (rounded up to whole blocks,
                         then cut back), stopped at the first `until` string

Python:
  import lm_eval
  from lladax.evals import lm_eval_adapter
  lm = lm_eval_adapter.harness_lm(checkpoint='/ckpt/llada-8b-base', mc_num=128)
  lm_eval.simple_evaluate(model=lm, tasks=['hellaswag'])
Command line (registers the model as 'lladax', then runs lm-eval's own CLI):
  python -m lladax.evals.lm_eval_adapter --model lladax \\
      --model_args checkpoint=/ckpt/llada-8b-base,mc_num=128 --tasks hellaswag

lm_eval is imported only by `harness_lm` / `harness_class` / `main`; LladaxLM's methods take any
request object with an `.args` tuple (or the tuple itself), so they run without lm-eval.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import checkpoint as checkpoint_lib
from lladax import diffusion, sampler
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import runner


def _args(request) -> tuple:
  return tuple(request.args) if hasattr(request, 'args') else tuple(request)


def _as_bool(value) -> bool:
  return value if isinstance(value, bool) else str(value).lower() in ('1', 'true', 'yes')


@functools.partial(jax.jit, static_argnames=('graphdef', 'mask_id', 'mc_num', 'batch_size',
                                             'cfg_scale'))
def _log_likelihood(graphdef, state, prompt, answer, key, mask_id, mc_num, batch_size, cfg_scale):
  model = nnx.merge(graphdef, state)
  return diffusion.log_likelihood(model, prompt, answer, key, mask_id=mask_id, mc_num=mc_num,
                                  batch_size=batch_size, cfg_scale=cfg_scale)


class LladaxLM:
  """The three request types of lm-eval's `LM`, over a lladax model.

  Arguments arrive as strings from --model_args, so numbers and flags are converted here.
  """

  def __init__(self, checkpoint: str = '', model=None, tokenizer=None, mc_num: int = 128,
               mc_batch: int = 16, cfg_scale: float = 0.0, greedy_check: bool = True,
               block_length: int = 32, steps: int = 0, max_gen_toks: int = 256,
               rolling_window: int = 0, batch_size: int = 1, seed: int = 0,
               rope_theta: float = 0.0, dtype: str = '', **unused: Any):
    del unused  # lm-eval passes device, max_batch_size, ... that do not apply
    if model is None:
      if not checkpoint:
        raise ConfigError('the lladax lm-eval model needs checkpoint=DIR in --model_args.')
      overrides = {'rope_theta': float(rope_theta)} if float(rope_theta) else {}
      if dtype:
        overrides['dtype'] = dtype
      model, meta = checkpoint_lib.load_model(checkpoint, **overrides)
      tokenizer = tokenizer or tokenizers.load(tokenizers.TokenizerConfig(), meta)
    if tokenizer is None:
      raise ConfigError('LladaxLM(model=...) needs tokenizer=... too.')
    self.model, self.tokenizer = model, tokenizer
    self.mc_num, self.mc_batch = int(mc_num), min(int(mc_batch), int(mc_num))
    self.cfg_scale, self.greedy_check = float(cfg_scale), _as_bool(greedy_check)
    self.block_length, self.steps = int(block_length), int(steps)
    self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
    self.rolling_window = int(rolling_window) or model.cfg.max_sequence_length
    self.generator = runner.ModelGenerator(model, tokenizer, int(batch_size))
    self.graphdef, self.state = nnx.split(model)
    cfg = model.cfg
    self.bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []

  # -- helpers

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """As LLaDA's eval harness: trailing spaces of the context go to the continuation, and the
    continuation is what the whole string adds to the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
      continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = self.tokenizer.encode(context + continuation)
    prefix = self.tokenizer.encode(context)
    return self.bos + prefix, whole[len(prefix):]

  def _score(self, prompt: list[int], answer: list[int]) -> float:
    """The bound with a key drawn from the tokens, so a request scores the same wherever it sits
    in a batch and however lm-eval orders it."""
    if not answer:
      return 0.0
    digest = zlib.crc32(np.asarray(prompt + [-1] + answer, np.int64).tobytes())
    key = jax.random.fold_in(jax.random.key(self.seed), digest & 0x7FFFFFFF)
    return float(_log_likelihood(self.graphdef, self.state, jnp.asarray(prompt, jnp.int32),
                                 jnp.asarray(answer, jnp.int32), key,
                                 self.model.cfg.mask_token_id, self.mc_num, self.mc_batch,
                                 self.cfg_scale))

  def _is_greedy(self, prompt: list[int], answer: list[int]) -> bool:
    n = len(answer)
    cfg = sampler.SamplerConfig(gen_length=n, block_length=n, steps=n)
    out = sampler.generate(self.model, jnp.asarray([prompt], jnp.int32), jax.random.key(0), cfg)
    return np.asarray(out)[0, len(prompt):].tolist() == list(answer)

  # -- lm-eval's interface

  def loglikelihood(self, requests: Sequence, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    del disable_tqdm
    out = []
    for request in requests:
      context, continuation = _args(request)[:2]
      prompt, answer = self._encode_pair(context, continuation)
      greedy = self._is_greedy(prompt, answer) if self.greedy_check and answer else False
      out.append((self._score(prompt, answer), greedy))
    return out

  def loglikelihood_rolling(self, requests: Sequence, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    out = []
    for request in requests:
      ids = self.tokenizer.encode(_args(request)[0])
      total = 0.0
      for start in range(0, len(ids), self.rolling_window):
        total += self._score(self.bos + ids[:start], ids[start:start + self.rolling_window])
      out.append(total)
    return out

  def generate_until(self, requests: Sequence, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    out = []
    for i, request in enumerate(requests):
      context, kwargs = _args(request)[:2]
      kwargs = dict(kwargs or {})
      until = kwargs.get('until') or []
      until = [until] if isinstance(until, str) else list(until)
      max_toks = int(kwargs.get('max_gen_toks', self.max_gen_toks))
      decode = runner.decode_settings(max_toks, min(self.block_length, max_toks),
                                      self.steps or None, 'generate_until')
      temperature = float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample', True) else 0.0
      cfg = dataclasses.replace(sampler.SamplerConfig(**decode), temperature=temperature)
      text = self.generator.generate([context], cfg, seed=self.seed + i, keep=max_toks)[0]
      for stop in until:
        if stop:
          text = text.split(stop, 1)[0]
      out.append(text)
    return out


def harness_class():
  """LladaxLM as an `lm_eval.api.model.LM` subclass, registered under the name 'lladax'."""
  try:
    from lm_eval.api import model as lm_model  # pylint: disable=import-outside-toplevel
    from lm_eval.api import registry  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError('the lm-eval adapter needs lm-evaluation-harness; pip install lm-eval.'
                      ) from None
  existing = getattr(registry, 'MODEL_REGISTRY', {}).get('lladax')
  if existing is not None:
    return existing

  class HarnessLM(LladaxLM, lm_model.LM):

    def __init__(self, **kwargs):
      lm_model.LM.__init__(self)
      LladaxLM.__init__(self, **kwargs)

  registry.register_model('lladax')(HarnessLM)
  return HarnessLM


def harness_lm(**kwargs):
  """An lm-eval model instance for lm_eval.simple_evaluate(model=...)."""
  return harness_class()(**kwargs)


def main(argv=None):
  """lm-eval's command line with 'lladax' registered as a model."""
  harness_class()
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=import-outside-toplevel
  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  cli_evaluate()


if __name__ == '__main__':
  main()
