"""Tokenizers: LLaDA-Instruct's chat template, special ids by token string, the interface."""
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models
from tokenizers.pre_tokenizers import ByteLevel

from lladax.data import tokenizers

# LLaDA's special tokens in its order (LLADA.md section 8), placed at 280.. in a 290-token test
# vocabulary so that no test can pass by knowing LLaDA-8B's real ids.
SPECIAL = ['<|startoftext|>', '<|endoftext|>', '[CLS]', '[gMASK]', '<|start_header_id|>',
           '<|end_header_id|>', '<|mdm_mask|>', '<role>', '<|eot_id|>', '</role>']
BOS, EOS, START_HEADER, END_HEADER, MASK, EOT = 280, 281, 284, 285, 286, 288


def _byte_symbols() -> dict[int, str]:
  """GPT-2's printable stand-ins for the 256 bytes (the byte-level BPE alphabet)."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  symbols, extra = {b: chr(b) for b in printable}, 0
  for b in range(256):
    if b not in symbols:
      symbols[b] = chr(256 + extra)
      extra += 1
  return symbols


def write_tokenizer(path: str, extra_tokens: int = 0) -> str:
  """A byte-level tokenizer.json: bytes 0..255, fillers, then SPECIAL at 280..289 (+ extras)."""
  vocab = {s: b for b, s in _byte_symbols().items()}
  vocab.update({f'<|reserved_{i}|>': i for i in range(256, 280)})
  vocab.update({s: 280 + i for i, s in enumerate(SPECIAL)})
  vocab.update({f'<|extra_{i}|>': 290 + i for i in range(extra_tokens)})
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
  tok.save(path)
  return path


def test_chat_template_matches_llada_instruct():
  text = tokenizers.chat_template([{'role': 'system', 'content': ' Be brief. '},
                                   {'role': 'user', 'content': 'Hi\n'}])
  assert text == ('<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.'
                  '<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>'
                  '<|start_header_id|>assistant<|end_header_id|>\n\n')


def test_encode_chat_uses_config_bos_and_single_token_markers(tmp_path):
  tok = tokenizers.HFTokenizer(write_tokenizer(str(tmp_path / 'tokenizer.json')))
  ids = tokenizers.encode_chat(tok, [{'role': 'user', 'content': 'Hi'}], bos_id=BOS)
  nl = list(b'\n\n')
  assert ids == ([BOS, START_HEADER, *b'user', END_HEADER, *nl, *b'Hi', EOT, START_HEADER,
                  *b'assistant', END_HEADER, *nl])
  # The same ids as tokenizing the full template text, BOS string included.
  assert ids == tok.encode(tokenizers.chat_template([{'role': 'user', 'content': 'Hi'}]))
  assert tokenizers.encode_chat(tok, [], bos_id=None)[0] == START_HEADER


def test_chat_template_rejects_malformed_messages():
  with pytest.raises(ValueError, match='role'):
    tokenizers.chat_template([{'content': 'no role'}])


def test_hf_tokenizer_special_ids_by_token_string(tmp_path):
  write_tokenizer(str(tmp_path / 'tokenizer.json'))
  tok = tokenizers.HFTokenizer(str(tmp_path))  # a folder holding tokenizer.json also works
  assert tok.vocab_size == 290
  assert [tok.token_to_id(s) for s in ('<|mdm_mask|>', '<|endoftext|>', '<|eot_id|>')] == [
      MASK, EOS, EOT]
  assert tok.token_to_id('<|not_a_token|>') is None
  assert tok.decode(tok.encode('héllo <|eot_id|>')) == 'héllo <|eot_id|>'


def test_byte_tokenizer_and_loader_unchanged(tmp_path):
  b = tokenizers.load(tokenizers.TokenizerConfig('bytes'))
  assert b.decode(b.encode('héllo')) == 'héllo'
  path = write_tokenizer(str(tmp_path / 'tokenizer.json'))
  assert isinstance(tokenizers.load(tokenizers.TokenizerConfig('hf', path)),
                    tokenizers.HFTokenizer)
