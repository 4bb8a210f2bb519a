"""Tokenizers behind one interface: bytes (built in), sentencepiece `.model`, Hugging Face `tokenizer.json`.

Special ids are never hard-coded for real checkpoints: they come from the model config. The byte
tokenizer exists so that tiny models train offline with no vocabulary file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Protocol, Sequence

from lladax.config import ConfigError, choice

KINDS = ('bytes', 'sentencepiece', 'hf')


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes 0..255, then four special tokens."""
  PAD = EOS = 256
  BOS = 257
  MASK = 258
  EOT = 259
  vocab_size = 260

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


class SentencePieceTokenizer:

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
  """A Hugging Face `tokenizer.json` (LLaDA ships only this), read by the `tokenizers` library."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _HF  # pylint: disable=import-outside-toplevel
    if os.path.isdir(path):
      path = os.path.join(path, 'tokenizer.json')
    self._tok = _HF.from_file(path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = 'bytes'   # bytes | sentencepiece | hf
  path: str = ''        # the .model file, or tokenizer.json (or the folder holding it)

  def __post_init__(self):
    choice(self.kind, KINDS, 'config.tokenizer.kind')
    if self.kind != 'bytes' and not self.path:
      raise ConfigError(f'config.tokenizer.kind={self.kind!r} needs config.tokenizer.path.')


def load(cfg: TokenizerConfig) -> Tokenizer:
  if cfg.kind == 'bytes':
    return ByteTokenizer()
  if not os.path.exists(cfg.path):
    raise ConfigError(f'tokenizer file {cfg.path} does not exist; set config.tokenizer.path '
                      'to a sentencepiece .model or a tokenizer.json.')
  return SentencePieceTokenizer(cfg.path) if cfg.kind == 'sentencepiece' else HFTokenizer(cfg.path)
