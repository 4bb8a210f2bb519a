"""How any evaluation job runs (`config.eval`) and the sampler settings it decodes with: the
protocol's generation settings, the recipe's deviations from them, a job's decode lengths."""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from lladax import sampler
from lladax.config import ConfigError, choice
from lladax.evals import protocols


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: how any evaluation job runs (what it measures is in its own section)."""
  batch_size: int = 1        # prompts decoded together, left-padded (rows per forward for ppl)
  pad_multiple: int = 256    # prompt widths are rounded up (to at least 1/8 of their power of
                             # two) so that few shapes compile; padding is never attended to
  mesh_hook: str = ''        # 'module:function' called as fn(model, config) -> (model, put) or
                             # (model, put, context): the model placed on a mesh, put(array)
                             # placing a [B, T] batch (batch over data axes, length over the
                             # context axis) and context() entered around every model call
                             # (e.g. the mesh); '' = one device
  oracle: bool = False       # replace the model by the job's oracle, which reads the answer off
                             # the prompt: a perfect score proves the pipeline (no checkpoint needed)
  resume: bool = True        # reuse the finished cells of <workdir>/<job>_cells.jsonl
  output_name: str = ''      # file prefix of the outputs; '' = the job's name (niah, ruler, ...)
  # How prompts become tokens, outputs become text and what the sampler may predict; '' = the
  # benchmark protocol's (lladax/evals/protocols.py). Another value is recorded as a deviation.
  prompt_tokens: str = ''    # tokenizer (its own special tokens, none for LLaDA) | bos
  decode: str = ''           # skip_special (all tokens, special ones skipped) | until_eos
  mask_prediction: str = ''  # allow (LLaDA's generate.py) | ban

  def __post_init__(self):
    if self.batch_size <= 0 or self.pad_multiple <= 0:
      raise ConfigError('config.eval.batch_size and pad_multiple must be positive.')
    for name, options in (('prompt_tokens', protocols.PROMPT_TOKENS),
                          ('decode', protocols.DECODE),
                          ('mask_prediction', protocols.MASK_PREDICTION)):
      if getattr(self, name):
        choice(getattr(self, name), options, f'config.eval.{name}')
    if self.mesh_hook and ':' not in self.mesh_hook:
      raise ConfigError(f'config.eval.mesh_hook={self.mesh_hook!r} must be "module:function".')


def sampler_settings(base: sampler.SamplerConfig, generation: protocols.Generation | None = None,
                     **decode) -> sampler.SamplerConfig:
  """config.sample's temperature, remasking, cfg and suppression with a job's decode lengths and
  the protocol's mask prediction."""
  if generation is not None:
    if base.mask_prediction != sampler.SamplerConfig.mask_prediction:
      raise ConfigError(f'config.sample.mask_prediction={base.mask_prediction!r} does not apply '
                        'to evaluation jobs; set config.eval.mask_prediction instead.')
    decode['mask_prediction'] = generation.mask_prediction
  return dataclasses.replace(base, **decode)


def note_deviations(info: dict, extra: Sequence[str], job: str) -> dict:
  """`info` with a job's own deviations from its protocol added to setup's, the new ones logged."""
  if extra:
    logging.warning('%s under protocol %s, with deviations: %s', job, info['protocol'],
                    '; '.join(extra))
  return dict(info, deviations=list(info['deviations']) + list(extra))


def decode_settings(gen_length: int, block_length: int, steps: int | None,
                    where: str) -> dict:
  """gen_length rounded up to whole blocks and steps capped at it (per task, never mutating a
  shared setting as the papers' wrapper did); steps None = one token per step."""
  if gen_length <= 0 or block_length <= 0:
    raise ConfigError(f'{where}: the generation and block lengths must be positive.')
  gen = -(-gen_length // block_length) * block_length
  blocks = gen // block_length
  steps = min(steps or gen, gen)
  steps = max(blocks, steps // blocks * blocks)  # a whole number of steps per block
  return {'gen_length': gen, 'block_length': block_length, 'steps': steps}


def generation_of(info: dict) -> protocols.Generation:
  """The generation settings `setup` resolved and recorded in `info`."""
  return protocols.Generation(**info['generation'])
