"""`config.replay`: the miniature's experiment grid (the network, pre-training optimiser and data
packing are the recipe's ordinary sections)."""
from __future__ import annotations

import dataclasses

from lladax.config import ConfigError, choice
from lladax.data import packing
from lladax.rope import RULES

TRAINING_FREE = ('none', 'ntk', 'diffusion_ntk')   # 'none' is direct extrapolation


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
  train_length: int = 256            # T: pre-training rows (tokens)
  multiples: tuple[int, ...] = (1, 2, 4, 8)   # evaluation lengths, in units of T
  post_multiple: int = 4             # post-training rows and the RoPE rules' target, in T
  training_free: tuple[str, ...] = TRAINING_FREE   # RoPE rules tried on the pre-trained model
  strategies: tuple[str, ...] = packing.STRATEGIES  # post-training packings compared
  seeds: tuple[int, ...] = (0, 1)    # post-training seeds (data order and noise)

  # Data (all generated from Python's own prose; lladax/replay/corpus.py)
  pre_documents: int = 20000         # retrieval documents of T/3..T tokens for pre-training
  post_documents: int = 4000         # retrieval documents of T/2..post_multiple*T for post-training
  retrieval_weight: float = 1.0      # share of retrieval documents against prose (weight 1)
  value_digits: int = 4              # digits of a needle's value (decoded with its period, EOS)
  length_buffer: int = 96            # tokens of each length kept for question, answer, BOS, EOS
  held_out_every: int = 20           # 1 in N prose documents is held out for evaluation
  prose_limit: int = 0               # >0 keeps the first N prose documents per split (smoke)

  # Retrieval fine-tuning after pre-training with LLaDA's SFT objective (the prompt is never
  # masked, only the answer is noised); 0 skips it. Records run from a short haystack up to
  # instruct_longest tokens (0 = T): on 0-16-byte haystacks the look-up was learned in 200 steps
  # and carried over to 60-110-byte ones, while on 0-160-byte haystacks nothing had moved by
  # step 100 (docs/mini/README.md). The learning rate decays (cosine) to 0 over the stage: held
  # constant at 1e-3, a gain made by step 600 was lost by step 700.
  instruct_steps: int = 0
  instruct_documents: int = 16000      # retrieval records (prompt, then the value as answer)
  instruct_prose_documents: int = 0    # prose records, noised whole, to keep the language model
  instruct_learning_rate: float = 1e-3
  instruct_longest: int = 0
  # A second phase on records up to T, from the first phase's model, at a lower learning rate;
  # 0 skips it. Records up to T from the pre-trained model taught nothing in 800 steps; after
  # the short phase, 400 steps on them took the 1T look-up from 23% to 85% (docs/mini/README.md).
  instruct_long_steps: int = 0
  instruct_long_learning_rate: float = 5e-4

  # Post-training (UltraLLaDA: diffusion-aware NTK base, packed documents, a few hundred steps)
  post_steps: int = 120
  post_batch_size: int = 4
  post_learning_rate: float = 5e-4
  post_warmup_steps: int = 10

  # Evaluation
  niah_depths: tuple[float, ...] = tuple(float(d) for d in range(0, 101, 10))
  niah_repeats: int = 2              # needle/haystack draws per (length, depth)
  ppl_chunk: int = 32                # tokens per scored chunk
  ppl_mc_samples: int = 4
  ppl_chunk_stride: int = 1
  eval_batch_size: int = 11          # prompts decoded together (one length at a time)
  report_dir: str = ''               # where the table and pictures go; '' = <workdir>/report

  def __post_init__(self):
    for rule in self.training_free:
      choice(rule, RULES, 'config.replay.training_free')
    for s in self.strategies:
      choice(s, packing.STRATEGIES, 'config.replay.strategies')
    if not self.multiples or min(self.multiples) < 1:
      raise ConfigError(f'config.replay.multiples={self.multiples} must be whole multiples of T '
                        '(at least 1), e.g. "(1, 2, 4, 8)".')
    if self.post_multiple < 2:
      raise ConfigError(f'config.replay.post_multiple={self.post_multiple}: post-training must '
                        'extend the context, so it is at least 2 (times T).')
    if self.train_length <= self.length_buffer + 16:
      raise ConfigError(f'config.replay.train_length={self.train_length} leaves no haystack '
                        f'after length_buffer={self.length_buffer}; raise train_length.')
    if self.instruct_longest and not (self.length_buffer + 16 < self.instruct_longest
                                      <= self.train_length):
      raise ConfigError(f'config.replay.instruct_longest={self.instruct_longest} must be 0 (= T) '
                        f'or between length_buffer + 17 = {self.length_buffer + 17} and '
                        f'train_length = {self.train_length} tokens.')
    for name in ('instruct_steps', 'instruct_long_steps', 'instruct_prose_documents'):  # 0: none
      if getattr(self, name) < 0:
        raise ConfigError(f'config.replay.{name}={getattr(self, name)} must be 0 (none) or '
                          'positive.')
    for name in ('pre_documents', 'post_documents', 'instruct_documents', 'post_steps',
                 'post_batch_size',
                 'niah_repeats', 'ppl_chunk', 'ppl_mc_samples', 'eval_batch_size',
                 'value_digits', 'held_out_every'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'config.replay.{name}={getattr(self, name)} must be positive.')
    if self.train_length < 2 * self.ppl_chunk:
      raise ConfigError(f'config.replay.ppl_chunk={self.ppl_chunk} is over half of T; lower it.')

  @property
  def instruct_length(self) -> int:
    """Tokens of the longest instruct record (and of the stage's rows)."""
    return self.instruct_longest or self.train_length

  @property
  def lengths(self) -> tuple[int, ...]:
    return tuple(m * self.train_length for m in sorted(self.multiples))

  @property
  def post_length(self) -> int:
    return self.post_multiple * self.train_length
