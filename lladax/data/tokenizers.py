"""Tokenizers behind one interface: bytes (built in), sentencepiece `.model`, Hugging Face `tokenizer.json`.

Special ids are never hard-coded for real checkpoints: they come from the model config. The byte
tokenizer exists so that tiny models train offline with no vocabulary file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Protocol, Sequence

from lladax.config import ConfigError, choice

KINDS = ('checkpoint', 'bytes', 'sentencepiece', 'hf')
# LLaDA-Instruct's chat markers (Llama-3 style); their ids come from the tokenizer.
CHAT_HEADER = '<|start_header_id|>{role}<|end_header_id|>\n\n'
CHAT_EOT = '<|eot_id|>'


class Tokenizer(Protocol):
  """encode(text, add_special_tokens=True) adds what the tokenizer itself adds around a text, as
  Hugging Face's `tokenizer(text)` does (only tokenizer.json files define any);
  decode(ids, skip_special_tokens=True) drops special tokens, as
  `batch_decode(..., skip_special_tokens=True)` does."""
  vocab_size: int

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes 0..255, then four special tokens."""
  PAD = EOS = 256
  BOS = 257
  MASK = 258
  EOT = 259
  vocab_size = 260

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # bytes carry no special tokens of their own
    return list(text.encode('utf-8'))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    del skip_special_tokens  # special ids (>= 256) have no text either way
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


class SentencePieceTokenizer:

  def __init__(self, path: str):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # a .model file records no such setting; sentencepiece adds nothing
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    del skip_special_tokens  # sentencepiece decodes control tokens to nothing either way
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
  """A Hugging Face `tokenizer.json` (LLaDA ships only this), read by the `tokenizers` library."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _HF  # pylint: disable=import-outside-toplevel
    if os.path.isdir(path):
      path = os.path.join(path, 'tokenizer.json')
    self._tok = _HF.from_file(path)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    """The id of a token string (e.g. '<|eot_id|>'), or None if the vocabulary lacks it."""
    return self._tok.token_to_id(token)


def chat_template(messages: Sequence[Mapping[str, str]], bos_token: str = '<|startoftext|>') -> str:
  """LLaDA-Instruct's chat template as text, exactly as its tokenizer_config.json renders it.

  Each message is `<|start_header_id|>ROLE<|end_header_id|>\n\n` + content.strip() +
  `<|eot_id|>`, BOS before the first; the assistant header always follows (the template ignores
  add_generation_prompt). Tokenize the result without adding special tokens.
  """
  parts = [bos_token]
  for m in messages:
    if not isinstance(m.get('role'), str) or not isinstance(m.get('content'), str):
      raise ValueError(f'a chat message needs string "role" and "content", got {dict(m)!r}')
    parts.append(f'{CHAT_HEADER.format(role=m["role"])}{m["content"].strip()}{CHAT_EOT}')
  parts.append(CHAT_HEADER.format(role='assistant'))
  return ''.join(parts)


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]],
                bos_id: int | None) -> list[int]:
  """Token ids of the chat prompt: `bos_id` (the model config's, never a hard-coded number) and
  then the template; the header and end-of-turn markers must be tokens of `tokenizer`."""
  ids = tokenizer.encode(chat_template(messages, bos_token=''))
  return ([bos_id] if bos_id is not None else []) + ids


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = 'checkpoint'  # checkpoint (the one the model directory records) | bytes |
                            # sentencepiece | hf
  path: str = ''            # the .model file, or tokenizer.json (or the folder holding it)

  def __post_init__(self):
    choice(self.kind, KINDS, 'config.tokenizer.kind')
    if self.kind in ('sentencepiece', 'hf') and not self.path:
      raise ConfigError(f'config.tokenizer.kind={self.kind!r} needs config.tokenizer.path.')


def load(cfg: TokenizerConfig, checkpoint_meta: dict | None = None) -> Tokenizer:
  """The tokenizer `cfg` names; kind 'checkpoint' takes the one a model directory recorded."""
  if cfg.kind == 'checkpoint':
    recorded = (checkpoint_meta or {}).get('tokenizer')
    if not recorded:
      raise ConfigError("config.tokenizer.kind='checkpoint' but no checkpoint with a recorded "
                        'tokenizer was given; set config.checkpoint, or config.tokenizer.kind '
                        'and path.')
    return load(TokenizerConfig(**recorded))
  if cfg.kind == 'bytes':
    return ByteTokenizer()
  if not os.path.exists(cfg.path):
    raise ConfigError(f'tokenizer file {cfg.path} does not exist; set config.tokenizer.path '
                      'to a sentencepiece .model or a tokenizer.json.')
  return SentencePieceTokenizer(cfg.path) if cfg.kind == 'sentencepiece' else HFTokenizer(cfg.path)
