"""Deterministic stand-ins for RULER's data files, in their formats (the real ones are never
committed): PaulGrahamEssays.jsonl, SQuAD v2 dev JSON and HotpotQA dev (distractor) JSON.

Built from a fixed linear congruential generator over bpe.py's words, so the files are the same on
every Python version. Sized for the golden lengths (1024-4096 tokens of the test BPE): the essays
run out before 4096 (the official search's 'haystack exhausted' branch), the SQuAD file is small
enough that at 2048 every document is used (the branch that shuffles the corpus in place), its
first article has more paragraphs than a 1024 prompt holds (distractors from the same article
only) and its second has fewer (distractors from other articles too).
"""
from __future__ import annotations

import json
import os

try:
  from golden import bpe
except ImportError:  # imported as tests.golden.ruler_inputs
  from tests.golden import bpe

NAMES = ('Zorvath', 'Quillan', 'Mervale', 'Tazrin', 'Olvend', 'Presk', 'Ulmora', 'Kestrin',
         'Varnot', 'Yelsin', 'Drummel', 'Fenwick', 'Gastor', 'Hollin', 'Ibbet', 'Jorvik')


class Draw:
  """The LCG of bpe.py as a small drawing helper."""

  def __init__(self, seed: int):
    self._gen = bpe._lcg(seed)  # pylint: disable=protected-access

  def below(self, n: int) -> int:
    return next(self._gen) % n

  def word(self) -> str:
    return bpe.WORDS[self.below(len(bpe.WORDS))]


def sentence(draw: Draw, n_words: int) -> str:
  words = [draw.word() for _ in range(n_words)]
  words[0] = words[0].capitalize()
  if draw.below(7) == 0:
    words.insert(draw.below(len(words)) + 1, f'{draw.below(90) + 1}.{draw.below(10)}')
  end = '.?!'[draw.below(10) % 3] if draw.below(4) == 0 else '.'
  return ' '.join(words) + end


def essay_texts(n_docs: int = 5, words_per_doc: int = 520, seed: int = 11) -> list[str]:
  """Essays of sentences and paragraphs, with the odd double space, tab and trailing blank."""
  draw, docs = Draw(seed), []
  for _ in range(n_docs):
    paragraphs, count = [], 0
    while count < words_per_doc:
      sents = []
      for _ in range(3 + draw.below(4)):
        n = 6 + draw.below(10)
        count += n
        sents.append(sentence(draw, n))
      sep = '  ' if draw.below(5) == 0 else ' '
      paragraphs.append(sep.join(sents))
    docs.append('\n\n'.join(paragraphs) + ('\t \n' if draw.below(2) else ''))
  return docs


def write_essays(path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    for i, text in enumerate(essay_texts()):
      f.write(json.dumps({'text': text, 'title': f'essay {i}'}) + '\n')
  return path


def _paragraph(draw: Draw, name: str, n_sents: int) -> str:
  sents = [sentence(draw, 7 + draw.below(6)) for _ in range(n_sents)]
  sents.insert(draw.below(n_sents + 1), f'The river is called {name} by the people of the '
                                       'north.')
  return ' '.join(sents)


def squad(seed: int = 21) -> dict:
  """SQuAD v2 dev format: articles of paragraphs, each with answerable questions (several
  annotator answers, some repeated) and unanswerable ones; one paragraph appears in two
  articles."""
  draw, data, name_i = Draw(seed), [], 0
  shared = None
  # (paragraphs, answerable questions per paragraph): article 0 is long with one question.
  layout = [(12, [1] + [0] * 11), (3, [2, 1, 2]), (4, [1, 0, 2, 1]), (2, [1, 1])]
  for a, (n_paragraphs, asked) in enumerate(layout):
    paragraphs = []
    for p in range(n_paragraphs):
      name = NAMES[name_i % len(NAMES)] + str(name_i)
      name_i += 1
      context = _paragraph(draw, name, 1 + draw.below(2))
      if a == 3 and p == 1 and shared is not None:
        context = shared
      if a == 1 and p == 0:
        shared = context
      qas = []
      for q in range(asked[p]):
        answers = [{'text': name, 'answer_start': context.find(name)}] * (1 + q)
        answers.append({'text': f'{name} river' if q else name, 'answer_start': 0})
        qas.append({'question': f'What do the people of the north call the river {a}.{p}.{q}?',
                    'id': f'q{a}{p}{q}', 'answers': answers, 'is_impossible': False})
      qas.append({'question': f'Who built the bridge {a}.{p}?', 'id': f'u{a}{p}',
                  'answers': [], 'plausible_answers': [{'text': name, 'answer_start': 0}],
                  'is_impossible': True})
      paragraphs.append({'qas': qas, 'context': context})
    data.append({'title': f'Article_{a}', 'paragraphs': paragraphs})
  return {'version': 'v2.0', 'data': data}


def hotpotqa(n_items: int = 8, seed: int = 31) -> list[dict]:
  """HotpotQA dev (distractor) format: each question with four titled paragraphs of sentences,
  one paragraph shared by two questions."""
  draw, items = Draw(seed), []
  for i in range(n_items):
    name = NAMES[(i * 5) % len(NAMES)] + f'-{i}'
    context = []
    for j in range(4):
      sents = [sentence(draw, 6 + draw.below(6)) + ' ' for _ in range(1 + draw.below(2))]
      if j == 1:
        sents.append(f'Its founder was {name}.')
      title = f'Place {i}-{j}' if not (i == 3 and j == 3) else 'Place 2-3'
      if i == 3 and j == 3:
        context.append(items[2]['context'][3])
        continue
      context.append([title, sents])
    items.append({'_id': f'h{i}', 'answer': name, 'question': f'Who founded the place {i}?',
                  'supporting_facts': [[f'Place {i}-1', 0]], 'context': context,
                  'type': 'bridge', 'level': 'hard'})
  return items


def write_json(path: str, value) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f)
  return path


def write_all(folder: str) -> dict[str, str]:
  """The three files and the test BPE (as cl100k_base.tiktoken) in `folder`."""
  return {'essay': write_essays(os.path.join(folder, 'PaulGrahamEssays.jsonl')),
          'squad': write_json(os.path.join(folder, 'dev-v2.0.json'), squad()),
          'hotpotqa': write_json(os.path.join(folder, 'hotpotqa.json'), hotpotqa()),
          'bpe': bpe.write(os.path.join(folder, 'cl100k_base.tiktoken'))}


def predictions(answers: list[str]) -> list[str]:
  """Predictions to score against `answers`: all of them in upper case, the first only, the
  last inside other text, none."""
  return [' ' + ', '.join(answers).upper() + '.', answers[0], f'It is {answers[-1]}, I think',
          ' nothing here']
