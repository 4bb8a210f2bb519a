"""Inputs of the NIAH goldens, written in NeedleBench's own formats: a haystack file like
en_un_asr.jsonl ({"title": "", "text": ...} per line, news-like prose whose sentences run into
each other) and a needles.jsonl of English and Chinese records with NeedleBench's fields, their
questions ending "... was________.'" or "... is________.'".

The haystack holds what makes the official algorithm's corners show: documents dense in 2-, 3-
and 4-byte characters (the test BPE of bpe.py splits them into byte tokens, so cuts and needle
insertions fall inside characters and decode as U+FFFD), an empty document, and documents
without a trailing space (documents are joined with no separator). `special=True` puts the
text of cl100k's <|endoftext|> into one document, which NeedleBench's tiktoken encode refuses.

Nothing here uses the random module or anything else that could differ between Python versions:
a fixed linear congruential generator picks the words.
"""
from __future__ import annotations

import json
import os

from golden import bpe

HAYSTACK = 'en_un_asr.jsonl'
NEEDLES = 'needles.jsonl'
N_DOCUMENTS = 36

# Characters of 2, 3 and 4 UTF-8 bytes, none of which the test BPE merges.
WIDE = ('é', 'ü', 'ß', 'ñ', '’', '“', '”', '€', '—', '月', '球', '乐', '队', '🚀', '🎸')
CJK = '在月球上的第一个乐队是虚拟火箭星际飞行银河旋律金星土卫六秘密配料冬季汤'

PLACES = ('the Moon', 'Mars', 'Venus', 'Titan', 'Europa')
BANDS = ('Virtual Rocket Band', 'Interstellar Flight Band', 'Galaxy Melody Band',
         'Copper Comet Trio')
DISHES = (('winter soup', 'smoked paprika'), ('harbour stew', 'black garlic'),
          ('island bread', 'toasted fennel'))
PLACES_ZH = ('月球', '金星', '火星')
BANDS_ZH = ('虚拟火箭乐队', '星际飞行乐队')


def _words(draw, n: int, wide_every: int = 0) -> str:
  """n words over bpe.WORDS with sentence ends; every `wide_every`-th word carries a character
  of WIDE (0: none)."""
  out = []
  for i in range(n):
    word = bpe.WORDS[next(draw) % len(bpe.WORDS)]
    if i == 0 or out[-1].endswith('.'):
      word = word.capitalize()
    if wide_every and i % wide_every == wide_every - 1:
      word += WIDE[next(draw) % len(WIDE)]
    r = next(draw) % 9
    if r == 0:
      word += '.'
    elif r == 1:
      word += ','
    out.append(word)
  return ' '.join(out)


def documents(special: bool = False) -> list[str]:
  """The texts of the haystack, in file order."""
  draw = bpe._lcg(11)  # pylint: disable=protected-access
  docs = []
  for i in range(N_DOCUMENTS):
    kind = i % 6
    if i == 7:
      docs.append('')  # the official code keeps an empty document in the shuffle
      continue
    if kind == 2:
      # Dense in CJK: three byte tokens a character, so a cut lands inside one.
      chars = [CJK[next(draw) % len(CJK)] for _ in range(40 + next(draw) % 40)]
      docs.append(''.join(chars) + '。')
      continue
    n = 30 + next(draw) % 70
    text = _words(draw, n, wide_every=2 if kind in (1, 4) else 0)
    if kind == 0:
      # OpenCompass' template filling deletes this literal from a prompt (safe_format fills the
      # answer column, '' when generating, after the prompt).
      text = text.replace(' ', ' {answer} ', 1)
    # Sentences run into the next document: most end with a period and no space.
    docs.append(text.rstrip(',.') + ('.' if kind != 5 else ' '))
  if special:
    docs[3] = docs[3][:20] + '<|endoftext|>' + docs[3][20:]
  return docs


def haystack_records(special: bool = False) -> list[dict]:
  return [{'title': '', 'text': text} for text in documents(special)]


def needle_records() -> list[dict]:
  """NeedleBench's needles.jsonl format: Chinese and English records interleaved."""
  out = []
  for place in PLACES_ZH[:2]:
    for band in BANDS_ZH:
      out.append({
          'needle': f'在{place}上的第一个乐队是{band}。',
          'retrieval_question': f"第一个在{place}上演出的乐队是哪一个？请按照'第一个在{place}上演出的"
                                "乐队是________。'的格式回答。",
          'gold_standard_answer': f'第一个在{place}上演出的乐队是{band}。', 'arg1': place,
          'arg2': band, 'type': 0, 'language': 'Chinese'})
  for i, place in enumerate(PLACES):
    for band in BANDS[i % 2:i % 2 + 2]:
      out.append({
          'needle': f'The first band to play on {place} was the {band}.',
          'retrieval_question': f'Which band was the first to perform on {place}? Please answer '
                                f"in the format 'The first band to perform on {place} "
                                "was________.'",
          'gold_standard_answer': f'The first band to perform on {place} was the {band}.',
          'arg1': place, 'arg2': band, 'type': 0, 'language': 'English'})
    if i < len(DISHES):
      dish, secret = DISHES[i]
      out.append({
          'needle': f'The secret ingredient of the {dish} is {secret}.',
          'retrieval_question': f'What is the secret ingredient of the {dish}? Please answer in '
                                f"the format 'The secret ingredient of the {dish} is________.'",
          'gold_standard_answer': f'The secret ingredient of the {dish} is {secret}.',
          'arg1': dish, 'arg2': secret, 'type': 0, 'language': 'English'})
    if i == 2:
      out.append({
          'needle': f'在{PLACES_ZH[2]}上的第一个乐队是{BANDS_ZH[0]}。',
          'retrieval_question': f"第一个在{PLACES_ZH[2]}上演出的乐队是哪一个？请按照'第一个在"
                                f"{PLACES_ZH[2]}上演出的乐队是________。'的格式回答。",
          'gold_standard_answer': '', 'arg1': PLACES_ZH[2], 'arg2': BANDS_ZH[0], 'type': 0,
          'language': 'Chinese'})
  return out


def _write_jsonl(path: str, rows) -> str:
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')
  return path


def write(folder: str, special: bool = False) -> dict:
  """Writes en_un_asr.jsonl, needles.jsonl and cl100k_base.tiktoken (the test BPE) into
  `folder`; returns their paths."""
  os.makedirs(folder, exist_ok=True)
  return {
      'haystack': _write_jsonl(os.path.join(folder, HAYSTACK), haystack_records(special)),
      'needles': _write_jsonl(os.path.join(folder, NEEDLES), needle_records()),
      'bpe': bpe.write(os.path.join(folder, 'cl100k_base.tiktoken')),
  }


# The cells the goldens record. Lengths are short (the haystack holds ~3K test-BPE tokens) but
# follow each grid's semantics: LongLLaDA's round thousands-like lengths, UltraLLaDA's multiples
# of a base; the last length of each is longer than the whole haystack (all documents, no more).
GRIDS = {
    'longllada': dict(lengths=(700, 900, 1300, 5200), depths=(0, 10, 30, 50, 70, 100),
                      repeats=4),
    'ultrallada': dict(lengths=(1024, 2048, 5120), depths=(0, 20, 50, 90, 100), repeats=4),
}
FULL_TEXT_LENGTHS = (700, 1024)   # prompts stored whole; the others as sha256, size and tail

# (prediction, needle, keyword) for the evaluator: keyword present, absent, whitespace variants,
# empty, case, unicode whitespace, an empty keyword and a needle holding '*'.
NEEDLE = 'The first band to play on the Moon was the Virtual Rocket Band.'
KEYWORD = 'Virtual Rocket Band'
PREDICTIONS = (
    (' the Virtual Rocket Band.', NEEDLE, KEYWORD),
    (' the Virtual Rocket Band.\n\nThe first band to play', NEEDLE, KEYWORD),
    (' the Galaxy Melody Band.', NEEDLE, KEYWORD),
    (' the Virtual  Rocket Band.', NEEDLE, KEYWORD),
    (' the Virtual\nRocket\tBand.', NEEDLE, KEYWORD),
    ('The first band to play on the Moon was the Virtual Rocket\u3000Band.', NEEDLE, KEYWORD),
    ('The first band to play on the Moon was the virtual rocket band.', NEEDLE, KEYWORD),
    ('', NEEDLE, KEYWORD),
    ('   \n\t ', NEEDLE, KEYWORD),
    (' nothing at all', NEEDLE, ''),
    (' a *starred* answer', 'The code of the *starred* vault is 42.', '42'),
    (' is 42.', 'The code of the *starred* vault is 42.', '42'),
    (' the\xa0Virtual Rocket Band', NEEDLE, KEYWORD),
    (' \u540c\u4e00 Virtual Rocket Bandit', NEEDLE, KEYWORD),
)

# Cell scores for the summarizer golden: nine lengths x 11 depths x 3 repeats, each a prediction
# of PREDICTIONS picked by a fixed rule (more than 8 of each, where numpy starts summing pairwise).
SUMMARY_LENGTHS = tuple(8192 * k for k in range(1, 10))
SUMMARY_DEPTHS = tuple(range(0, 101, 10))
SUMMARY_REPEATS = 3


def summary_prediction(length_index: int, depth_index: int, repeat: int) -> int:
  """Picks whose per-length means and Overall differ in the last bit between a left-to-right
  sum and numpy's pairwise one, so the golden pins which one the summarizer's pandas does."""
  return (length_index + depth_index + 4 * repeat) % len(PREDICTIONS)
