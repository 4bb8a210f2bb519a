"""The evaluation protocols: how a benchmark was run by a paper, or by lladax.

`longllada` and `ultrallada` are the papers' protocols as their official code ran them
(OpenMOSS/LongLLaDA and Relaxed-System-Lab/UltraLLaDA, both on OpenCompass 0.4.2 with the same
`LLaDACausalLM` wrapper); `lladax` is this project's own reading of each benchmark, kept as an
option. Each benchmark module holds what its protocol changes in the prompt, the data and the
metric; this module holds what every benchmark shares: how prompts become tokens, how outputs
become text, what the sampler may predict and the precision the network runs in.

A setting of config.eval / config.model that differs from the named protocol is allowed and
recorded in the results file under `deviations`, never silently.
"""
from __future__ import annotations

import dataclasses

from lladax.config import ConfigError, choice

NAMES = ('longllada', 'ultrallada', 'lladax')
PAPERS = ('longllada', 'ultrallada')

PROMPT_TOKENS = ('tokenizer', 'bos')   # the tokenizer's own special tokens | the model's BOS + text
DECODE = ('skip_special', 'until_eos')
MASK_PREDICTION = ('allow', 'ban')


@dataclasses.dataclass(frozen=True)
class Generation:
  """What every benchmark of a protocol shares."""
  # How a prompt becomes tokens. 'tokenizer': as `tokenizer(text)` in Hugging Face, i.e. with the
  # special tokens the tokenizer itself adds (LLaDA's adds none: its prompts carry no BOS);
  # 'bos': the model config's BOS, then the text.
  prompt_tokens: str
  # How the decoded tokens become text. 'skip_special': all gen_length tokens decoded with special
  # tokens skipped (text after an EOS is kept, as the papers' wrapper's batch_decode does);
  # 'until_eos': the tokens before the first EOS / EoT.
  decode: str
  # 'allow': the network may predict the mask token, which leaves that position masked to be
  # filled at a later step (LLaDA's generate.py); 'ban': the mask token is never predicted.
  mask_prediction: str
  dtype: str          # compute dtype of the network
  param_dtype: str    # weights as loaded

  def __post_init__(self):
    choice(self.prompt_tokens, PROMPT_TOKENS, 'config.eval.prompt_tokens')
    choice(self.decode, DECODE, 'config.eval.decode')
    choice(self.mask_prediction, MASK_PREDICTION, 'config.eval.mask_prediction')


# The papers' wrapper loads LLaDA with torch_dtype=float16 and tokenizes with the tokenizer's own
# settings; its generate() is LLaDA's, which lets the network predict the mask token.
_PAPER = Generation(prompt_tokens='tokenizer', decode='skip_special', mask_prediction='allow',
                    dtype='float16', param_dtype='float16')
GENERATION = {
    'longllada': _PAPER,
    'ultrallada': _PAPER,
    'lladax': Generation(prompt_tokens='bos', decode='until_eos', mask_prediction='ban',
                         dtype='bfloat16', param_dtype='bfloat16'),
}


# LLaDA's generate() as the papers' wrapper calls it: greedy, no guidance, low-confidence
# remasking, EOS neither suppressed (logits_eos_inf) nor deferred (confidence_eos_eot_inf).
PAPER_SAMPLER = dict(temperature=0.0, cfg_scale=0.0, remasking='low_confidence',
                     suppress_eos=False, suppress_eot=False, defer_eos_eot=False)


def sampler_deviations(sample, protocol: str) -> list[str]:
  """config.sample's settings that differ from the papers' sampler under a paper protocol."""
  if protocol not in PAPERS:
    return []
  return [f'config.sample.{k}={getattr(sample, k)!r} (protocol {protocol}: {v!r})'
          for k, v in PAPER_SAMPLER.items() if getattr(sample, k) != v]


def cache_deviations(sample) -> list[str]:
  """The cached sampler under any protocol: every protocol decodes without a cache, and the
  cache is approximate (the prompt does not see the answer change between refreshes)."""
  if sample is None or sample.cache == 'none':
    return []
  return [f'config.sample.cache={sample.cache!r} with cache_refresh={sample.cache_refresh!r} and '
          f"cache_recompute={sample.cache_recompute} (every protocol: 'none'; approximate)"]


def check(name: str, where: str) -> str:
  return choice(name, NAMES, where)


def generation(protocol: str, eval_cfg=None, model_section=None) -> tuple[Generation, list[str]]:
  """(settings, deviations): the protocol's generation settings with the recipe's explicit choices
  (config.eval.prompt_tokens / decode / mask_prediction when not '', config.model.dtype /
  param_dtype when set) applied, and the names of those that differ from the protocol."""
  if protocol not in GENERATION:
    raise ConfigError(f'protocol {protocol!r} is not one of {", ".join(NAMES)}.')
  base = GENERATION[protocol]
  chosen = {}
  for name in ('prompt_tokens', 'decode', 'mask_prediction'):
    value = getattr(eval_cfg, name, '') if eval_cfg is not None else ''
    if value:
      chosen[name] = value
  for name in ('dtype', 'param_dtype'):
    value = getattr(model_section, name, None)
    if value:
      chosen[name] = value
  settings = dataclasses.replace(base, **chosen)
  deviations = [f'{k}={v} (protocol {protocol}: {getattr(base, k)})' for k, v in chosen.items()
                if getattr(base, k) != v]
  return settings, deviations
