"""The one place evaluation jobs call the model: `ModelGenerator` (sampling) and `ModelScorer`
(cross-entropy of masked tokens) over left-padded, width-bucketed batches. A faster attention
kernel (`config.model.attention_kernel`) or a device mesh (`config.eval.mesh_hook`) therefore
applies to every job; an oracle implementing the same `Generator` interface replaces the model to
prove a job's pipeline right."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lladax import diffusion, sampler
from lladax.evals import protocols


def bucket(n: int, multiple: int) -> int:
  """n rounded up to a multiple of max(multiple, 1/8 of n's power of two): at most ~12% padding
  and a handful of compiled shapes per doubling of the length."""
  step = max(multiple, 2 ** max(0, n.bit_length() - 4))
  return -(-n // step) * step


class Generator(Protocol):
  """Text in, text out: continuations of `prompts` decoded with sampler settings `cfg`."""

  def generate(self, prompts: Sequence[str], cfg: sampler.SamplerConfig,
               seed: int = 0) -> list[str]: ...


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _tail_cross_entropy(graphdef, state, tokens, segment_ids, targets):
  """CE of the last W = targets.shape[1] positions; only they go through the LM head, so a 128K
  prefix never materialises [T, vocab] logits."""
  model = nnx.merge(graphdef, state)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  hidden = model.hidden(tokens, positions, segment_ids)
  logits = model.logits(hidden[:, -targets.shape[1]:])
  return diffusion.token_cross_entropy(logits, targets)


LLADAX_GENERATION = protocols.GENERATION['lladax']


class ModelGenerator:
  """The LLaDA sampler behind `Generator`: prompt tokens as `generation.prompt_tokens` says,
  left-padded batches of `batch_size` whose widths are bucketed, decoded, turned into text as
  `generation.decode` says."""

  def __init__(self, model, tokenizer, batch_size: int = 1, pad_multiple: int = 256,
               put: Callable = jnp.asarray, context: Callable = contextlib.nullcontext,
               generation: protocols.Generation = LLADAX_GENERATION):
    self.model, self.tokenizer, self.put, self.context = model, tokenizer, put, context
    self.batch_size, self.pad_multiple, self.generation = batch_size, pad_multiple, generation
    cfg = model.cfg
    self.bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    self.eos = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)

  def prompt_ids(self, text: str) -> list[int]:
    if self.generation.prompt_tokens == 'tokenizer':
      return self.tokenizer.encode(text, add_special_tokens=True)
    return self.bos + self.tokenizer.encode(text)

  def text(self, ids) -> str:
    """Decoded output tokens as the protocol turns them into text."""
    if self.generation.decode == 'skip_special':
      return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    return self.tokenizer.decode(sampler.strip_generation(ids, self.eos))

  def generate(self, prompts, cfg, seed=0, keep: int | None = None):
    """`keep` cuts each output to its first `keep` tokens (the decode length is whole blocks)."""
    return self.generate_ids([self.prompt_ids(p) for p in prompts], cfg, seed, keep)

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], cfg, seed=0,
                   keep: int | None = None):
    """As `generate`, for prompts already tokenized (e.g. truncated as token ids)."""
    out = []
    for start in range(0, len(prompt_ids), self.batch_size):
      ids = [list(p) for p in prompt_ids[start:start + self.batch_size]]
      n = len(ids)
      # Short final batches are filled with copies so every batch has one compiled shape.
      ids += [ids[0]] * (self.batch_size - n)
      width = bucket(max(len(i) for i in ids), self.pad_multiple)
      tokens = np.full((len(ids), width), self.model.cfg.pad_token_id, np.int32)
      mask = np.zeros((len(ids), width), bool)
      for row, seq in enumerate(ids):
        tokens[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = True
      key = jax.random.fold_in(jax.random.key(seed), start)
      with self.context():
        rows = np.asarray(sampler.generate(self.model, self.put(tokens), key, cfg,
                                           self.put(mask)))
      out += [self.text(r[width:width + (keep or len(r))]) for r in rows[:n]]
    return out


class ModelScorer:
  """Cross-entropy of the last W tokens of (noised) sequences sharing one prefix length: what
  both perplexity estimators need. Rows run `batch_size` at a time; prefixes are left-padded to a
  bucketed width (padding is its own segment 0, never attended to)."""

  def __init__(self, model, batch_size: int = 8, pad_multiple: int = 256,
               put: Callable = jnp.asarray, context: Callable = contextlib.nullcontext):
    self.model, self.batch_size, self.pad_multiple = model, batch_size, pad_multiple
    self.put, self.context = put, context
    self.mask_id, self.bos_id = model.cfg.mask_token_id, model.cfg.bos_token_id
    self.graphdef, self.state = nnx.split(model)

  def tail_cross_entropy(self, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """tokens [B, T] (the tail W positions possibly masked), targets [B, W] -> CE [B, W]."""
    b, t = tokens.shape
    width = bucket(t, self.pad_multiple)
    padded = np.full((b, width), self.model.cfg.pad_token_id, np.int32)
    padded[:, width - t:] = tokens
    segments = np.zeros((b, width), np.int32)
    segments[:, width - t:] = 1
    out = []
    for s in range(0, b, self.batch_size):
      sl = slice(s, s + self.batch_size)
      with self.context():
        out.append(np.asarray(_tail_cross_entropy(
            self.graphdef, self.state, self.put(padded[sl]), self.put(segments[sl]),
            self.put(np.asarray(targets[sl], np.int32)))))
    return np.concatenate(out)


def prompt_ids(generator, tokenizer, generation: protocols.Generation, text: str) -> list[int]:
  """The prompt's token ids as the model receives them; for a generator other than the model
  (an oracle), the text's tokens with the tokenizer's own special tokens or none (an oracle has
  no model config to take a BOS from)."""
  if isinstance(generator, ModelGenerator):
    return generator.prompt_ids(text)
  return tokenizer.encode(text, add_special_tokens=generation.prompt_tokens == 'tokenizer')
