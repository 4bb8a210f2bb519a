"""lm-evaluation-harness driving a lladax checkpoint, as LLaDA's own harness (eval_llada.py) does.

By default every request is answered as ML-GSAI/LLaDA's `LLaDAEvalHarness` answers it, with its
model arguments under their names and defaults:

  loglikelihood          the Monte Carlo bound of LLaDA's get_log_likelihood
                         (lladax.diffusion.log_likelihood): mc_num draws in mini-batches of
                         `batch_size` rows (mc_num % batch_size == 0), one k per mini-batch and
                         stratified mask counts, sum(CE / p) / batch_size averaged over
                         mini-batches; `cfg` guidance; every mask token of the noised sequence
                         scored (one the text itself holds too). Context and continuation are
                         tokenized as the tokenizer itself does (LLaDA's adds no BOS); trailing
                         spaces of the context move to the continuation. is_greedy
                         (is_check_greedy): the
                         continuation decoded as suffix_greedy_prediction does, one token per
                         step over every masked position (prompt masks too), the mask token a
                         valid prediction, with `cfg` (its unconditional copy masks the whole
                         prompt).
  generate_until         LLaDA's generate() with the model arguments gen_length / steps /
                         block_length / remasking / cfg at temperature 0 (the request's
                         max_gen_toks and sampling settings are not used), decoded WITH special
                         tokens, cut at each `until` string in turn, then re-tokenized and decoded
                         without special tokens (until_mode='official').
  loglikelihood_rolling  LLaDA's harness has none; lladax offers the bound over consecutive
                         windows of `rolling_window` tokens, each given all text before it.

lladax's own options, named (none is on by default):
  until_mode='max_gen_toks'  the request's max_gen_toks (default `max_gen_toks`) rounded up to
                             whole blocks of min(block_length, max_gen_toks), `steps` capped at
                             that (one token per step by default), the output cut back to
                             max_gen_toks tokens, decoded up to the first EOS / EoT, temperature
                             from the request (do_sample), cut at the first `until` string. A
                             task's own length limit is then honoured, and short answers cost
                             short decodes.
  prompt_tokens='bos'        the model config's BOS before every context.
  mask_prediction='ban'      the sampler never predicts the mask token (generate_until, is_greedy).
  score_all_masks=False      the likelihood scores the noised answer positions only, not mask
                             tokens the text itself holds (LLaDA's code scores those as targets).
  gen_batch_size=N           generate_until decodes N requests at once (left-padded; the same
                             tokens up to float rounding of RoPE at shifted positions).
Prompts are left-padded to bucketed widths (pad_multiple) so few shapes compile; padding is never
attended to.

Python:
  import lm_eval
  from lladax.evals import lm_eval_adapter
  lm = lm_eval_adapter.harness_lm(checkpoint='/ckpt/llada-8b-base', mc_num=128, batch_size=8)
  lm_eval.simple_evaluate(model=lm, tasks=['hellaswag'])
Command line (registers the model as 'lladax', then runs lm-eval's own CLI; as LLaDA's
eval_llada_lm_eval.sh, --batch_size is the Monte Carlo mini-batch):
  python -m lladax.evals.lm_eval_adapter --model lladax --batch_size 8 \\
      --model_args checkpoint=/ckpt/llada-8b-base,cfg=0.5,is_check_greedy=False,mc_num=128 \\
      --tasks hellaswag

lm_eval is imported only by `harness_lm` / `harness_class` / `main`; LladaxLM's methods take any
request object with an `.args` tuple (or the tuple itself), so they run without lm-eval.
"""
from __future__ import annotations

import functools
import sys
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import diffusion, sampler, saved_model
from lladax.config import ConfigError, choice
from lladax.data import tokenizers
from lladax.evals import eval_settings, model_calls, protocols

UNTIL_MODES = ('official', 'max_gen_toks')
# What lm-eval itself adds to the model arguments (create_from_arg_string); unused here.
LM_EVAL_EXTRAS = ('device', 'max_batch_size')
RENAMED = {'mc_batch': 'batch_size (the Monte Carlo mini-batch, as eval_llada.py)',
           'cfg_scale': 'cfg', 'greedy_check': 'is_check_greedy'}


def _args(request) -> tuple:
  return tuple(request.args) if hasattr(request, 'args') else tuple(request)


def _as_bool(value) -> bool:
  return value if isinstance(value, bool) else str(value).lower() in ('1', 'true', 'yes')


def _int(value, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ConfigError(f'the lladax lm-eval model needs an integer {name}, got {value!r}.'
                      ) from None


def cut_at(text: str, until: Sequence[str]) -> str:
  """eval_llada.py's stop handling: for each stop string in turn, the text before its first
  occurrence."""
  for stop in until:
    if stop and stop in text:
      text = text.split(stop)[0]
  return text


@functools.partial(jax.jit, static_argnames=('graphdef', 'mask_id', 'mc_num', 'batch_size',
                                             'cfg_scale', 'score_all_masks'))
def _log_likelihood(graphdef, state, prompt, answer, key, mask_id, mc_num, batch_size, cfg_scale,
                    prompt_valid=None, score_all_masks=False):
  """diffusion.log_likelihood, the prompt possibly left-padded where prompt_valid is False
  (padding is its own segment 0: never attended to, never masked, never scored)."""
  model = nnx.merge(graphdef, state)
  if prompt_valid is None:
    prompt_valid = jnp.ones(prompt.shape, bool)
  segments = jnp.concatenate([prompt_valid, jnp.ones(answer.shape, bool)]).astype(jnp.int32)

  def logits_fn(tokens):
    return model(tokens, None, jnp.broadcast_to(segments, tokens.shape))

  return diffusion.log_likelihood(logits_fn, prompt, answer, key, mask_id=mask_id,
                                  mc_num=mc_num, batch_size=batch_size, cfg_scale=cfg_scale,
                                  score_all_masks=score_all_masks)


class LladaxLM:
  """The three request types of lm-eval's `LM`, over a lladax model.

  Arguments arrive as strings from --model_args, so numbers and flags are converted here.
  """

  def __init__(self, checkpoint: str = '', model=None, tokenizer=None, mc_num: int = 128,
               batch_size: int = 32, is_check_greedy: bool = True, cfg: float = 0.0,
               steps: int = 1024, gen_length: int = 1024, block_length: int = 1024,
               remasking: str = 'low_confidence', max_length: int = 4096,
               until_mode: str = 'official', max_gen_toks: int = 256,
               prompt_tokens: str = 'tokenizer', mask_prediction: str = 'allow',
               score_all_masks: bool = True, rolling_window: int = 0,
               gen_batch_size: int = 1, pad_multiple: int = 64,
               seed: int = 0, rope_theta: float = 0.0, dtype: str = '',
               attention_kernel: str = 'auto', **others: Any):
    renamed = [k for k in others if k in RENAMED]
    if renamed:
      raise ConfigError(f'the lladax lm-eval model argument {renamed[0]} is now '
                        f'{RENAMED[renamed[0]]}; rename it in --model_args.')
    unknown = sorted(k for k in others if k not in LM_EVAL_EXTRAS)
    if unknown:
      raise ConfigError(f'{unknown[0]} is not a lladax lm-eval model argument; see '
                        'lladax/evals/lm_eval_adapter.py for the ones it takes.')
    if model is None:
      if not checkpoint:
        raise ConfigError('the lladax lm-eval model needs checkpoint=DIR in --model_args.')
      overrides = {'rope_theta': float(rope_theta)} if float(rope_theta) else {}
      # The recipes' default, not the kernel the checkpoint was saved with (older ones say
      # 'reference', whose dense scores do not fit long inputs).
      overrides['attention_kernel'] = attention_kernel
      if dtype:
        overrides['dtype'] = dtype
      model, meta = saved_model.load_model(checkpoint, **overrides)
      tokenizer = tokenizer or tokenizers.load(tokenizers.TokenizerConfig(), meta)
    if tokenizer is None:
      raise ConfigError('LladaxLM(model=...) needs tokenizer=... too.')
    self.model, self.tokenizer = model, tokenizer
    self.mc_num, self.batch_size = _int(mc_num, 'mc_num'), _int(batch_size, 'batch_size')
    if self.mc_num <= 0 or self.batch_size <= 0 or self.mc_num % self.batch_size:
      raise ConfigError(f'mc_num={self.mc_num} must be a positive multiple of batch_size='
                        f'{self.batch_size} (the Monte Carlo mini-batch, as eval_llada.py); '
                        'change either in --model_args / --batch_size.')
    self.is_check_greedy, self.cfg = _as_bool(is_check_greedy), float(cfg)
    self.score_all_masks = _as_bool(score_all_masks)
    self.steps, self.gen_length = _int(steps, 'steps'), _int(gen_length, 'gen_length')
    self.block_length, self.max_length = _int(block_length, 'block_length'), int(max_length)
    self.remasking = choice(remasking, sampler.REMASKING, 'remasking')
    self.until_mode = choice(until_mode, UNTIL_MODES, 'until_mode')
    self.prompt_tokens = choice(prompt_tokens, protocols.PROMPT_TOKENS, 'prompt_tokens')
    self.mask_prediction = choice(mask_prediction, sampler.MASK_PREDICTION, 'mask_prediction')
    self.max_gen_toks, self.seed = _int(max_gen_toks, 'max_gen_toks'), _int(seed, 'seed')
    self.rolling_window = _int(rolling_window, 'rolling_window') or model.cfg.max_sequence_length
    self.gen_batch_size = _int(gen_batch_size, 'gen_batch_size')
    self.pad_multiple = max(1, _int(pad_multiple, 'pad_multiple'))
    self.graphdef, self.state = nnx.split(model)
    cfg = model.cfg
    self.bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    self.eos = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)
    if self.until_mode == 'official':
      # Checked now, not at the first generate_until request.
      self._official_settings()

  # -- helpers

  def _tokens(self, text: str) -> list[int]:
    """A text's ids as a prompt: the tokenizer's own special tokens (HF `tokenizer(text)`), or
    the model's BOS and the text (prompt_tokens='bos')."""
    if self.prompt_tokens == 'bos':
      return self.bos + self.tokenizer.encode(text)
    return self.tokenizer.encode(text, add_special_tokens=True)

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """As eval_llada.py: trailing spaces of the context go to the continuation, and the
    continuation is what the whole string adds to the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
      continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = self._tokens(context + continuation)
    prefix = self._tokens(context)
    return prefix, whole[len(prefix):]

  def _padded(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded to a bucketed width: (tokens [B, W], real [B, W])."""
    width = model_calls.bucket(max(1, max(len(r) for r in rows)), self.pad_multiple)
    tokens = np.full((len(rows), width), self.model.cfg.pad_token_id, np.int32)
    real = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
      if row:
        tokens[i, width - len(row):], real[i, width - len(row):] = row, True
    return tokens, real

  def _score(self, prompt: list[int], answer: list[int]) -> float:
    """The bound with a key drawn from the tokens, so a request scores the same wherever it sits
    in a batch and however lm-eval orders it."""
    if not answer:
      return 0.0
    digest = zlib.crc32(np.asarray(prompt + [-1] + answer, np.int64).tobytes())
    key = jax.random.fold_in(jax.random.key(self.seed), digest & 0x7FFFFFFF)
    tokens, real = self._padded([prompt])
    return float(_log_likelihood(self.graphdef, self.state, jnp.asarray(tokens[0]),
                                 jnp.asarray(answer, jnp.int32), key,
                                 self.model.cfg.mask_token_id, self.mc_num, self.batch_size,
                                 self.cfg, jnp.asarray(real[0]), self.score_all_masks))

  def _greedy_decode(self, prompt: list[int], n: int) -> list[int]:
    """suffix_greedy_prediction's decode: n steps, one token each, chosen over every masked
    position (the prompt's too) by confidence; guidance masks the whole prompt."""
    cfg = sampler.SamplerConfig(gen_length=n, block_length=n, steps=n, cfg_scale=self.cfg,
                                mask_prediction=self.mask_prediction)
    tokens, real = self._padded([prompt])
    out = sampler.generate(self.model, tokens, jax.random.key(0), cfg, real, uncond='prompt')
    return np.asarray(out)[0, tokens.shape[1]:].tolist()

  def _is_greedy(self, prompt: list[int], answer: list[int]) -> bool:
    return self._greedy_decode(prompt, len(answer)) == list(answer)

  def _generate(self, prompts: list[list[int]], cfg: sampler.SamplerConfig,
                seed: int) -> list[list[int]]:
    """Generated ids of each prompt, `gen_batch_size` rows per call (short batches are filled
    with copies, so every batch has one compiled shape)."""
    out = []
    for start in range(0, len(prompts), self.gen_batch_size):
      rows = prompts[start:start + self.gen_batch_size]
      n = len(rows)
      tokens, real = self._padded(rows + [rows[0]] * (self.gen_batch_size - n))
      key = jax.random.fold_in(jax.random.key(seed), start)
      x = np.asarray(sampler.generate(self.model, tokens, key, cfg, real))
      out += [x[i, tokens.shape[1]:].tolist() for i in range(n)]
    return out

  def _official_settings(self) -> sampler.SamplerConfig:
    try:
      return sampler.SamplerConfig(
          gen_length=self.gen_length, block_length=self.block_length, steps=self.steps,
          cfg_scale=self.cfg, remasking=self.remasking, mask_prediction=self.mask_prediction)
    except ConfigError as e:
      raise ConfigError(f'the lm-eval model arguments gen_length / block_length / steps: {e}'
                        ) from None

  def _official_text(self, ids: list[int], until: Sequence[str]) -> str:
    """eval_llada.py: decoded with special tokens, cut at the stop strings, then re-tokenized
    and decoded without special tokens."""
    text = cut_at(self.tokenizer.decode(ids, skip_special_tokens=False), until)
    again = self.tokenizer.encode(text, add_special_tokens=True)
    return self.tokenizer.decode(again, skip_special_tokens=True)

  # -- lm-eval's interface

  def loglikelihood(self, requests: Sequence, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    del disable_tqdm
    pairs = [self._encode_pair(*_args(r)[:2]) for r in requests]
    longest = max((len(p) + len(a) for p, a in pairs), default=0)
    if longest > self.max_length:
      raise ConfigError(f'a loglikelihood request has {longest} tokens, more than max_length='
                        f'{self.max_length}; raise max_length in --model_args.')
    out = []
    for prompt, answer in pairs:
      greedy = self._is_greedy(prompt, answer) if self.is_check_greedy and answer else False
      out.append((self._score(prompt, answer), greedy))
    return out

  def loglikelihood_rolling(self, requests: Sequence, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    out = []
    for request in requests:
      ids = self.tokenizer.encode(_args(request)[0])
      start = self._tokens('')
      total = 0.0
      for s in range(0, len(ids), self.rolling_window):
        total += self._score(start + ids[:s], ids[s:s + self.rolling_window])
      out.append(total)
    return out

  def generate_until(self, requests: Sequence, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    parsed = []
    for request in requests:
      context, kwargs = _args(request)[:2]
      kwargs = dict(kwargs or {})
      until = kwargs.get('until') or []
      parsed.append((context, [until] if isinstance(until, str) else list(until), kwargs))
    if self.until_mode == 'official':
      cfg = self._official_settings()
      ids = self._generate([self._tokens(c) for c, _, _ in parsed], cfg, self.seed)
      return [self._official_text(i, until) for i, (_, until, _) in zip(ids, parsed)]
    out = []
    for i, (context, until, kwargs) in enumerate(parsed):
      max_toks = _int(kwargs.get('max_gen_toks', self.max_gen_toks), 'max_gen_toks')
      decode = eval_settings.decode_settings(max_toks, min(self.block_length, max_toks), self.steps,
                                      'generate_until')
      temperature = float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample', True) else 0.0
      cfg = sampler.SamplerConfig(**decode, temperature=temperature, cfg_scale=self.cfg,
                                  remasking=self.remasking, mask_prediction=self.mask_prediction)
      ids, = self._generate([self._tokens(context)], cfg, self.seed + i)
      text = self.tokenizer.decode(sampler.strip_generation(ids[:max_toks], self.eos))
      for stop in until:
        if stop:
          text = text.split(stop, 1)[0]
      out.append(text)
    return out


def harness_class():
  """LladaxLM as an `lm_eval.api.model.LM` subclass, registered under the name 'lladax'."""
  try:
    from lm_eval.api import registry  # pylint: disable=import-outside-toplevel
    from lm_eval.api import model as lm_model  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError('the lm-eval adapter needs lm-evaluation-harness; pip install lm-eval.'
                      ) from None
  if 'lladax' in registry.MODEL_REGISTRY:  # lm-eval's registry: .get raises for a missing name
    return registry.MODEL_REGISTRY['lladax']

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
