"""RULER's tasks (NVIDIA/RULER, synthetic.yaml), generated here for any length in any tokenizer:
config.ruler.protocol='lladax', lladax's own reading. The papers' RULER (OpenCompass 0.4.2's,
draw for draw) is ruler_opencompass.py.

Written from RULER's task definitions: the same needles ("One of the special magic numbers for
{key} is: {value}."), haystacks (noise / essay / needle), templates and answer prefixes, variable
chains, word-frequency lists and QA document mixes. Differences, on purpose: keys and word lists
come from lladax's built-in vocabulary (or a user word list) instead of the wonderwords package,
essays are split into sentences by punctuation instead of NLTK's punkt, and a haystack size is
found by bisection for the first sample of a task and length, then checked (and lowered by
bisection if needed) for each later sample.

A sample is a prompt (template + answer prefix, ready for a base model to complete), its
reference answers and the haystack size; `fit` picks the largest size whose prompt fits.
"""
from __future__ import annotations

import dataclasses
import json
import os
import string
import uuid
from typing import Callable, Sequence

import numpy as np

from lladax.config import ConfigError
from lladax.evals import haystack as haystack_lib
from lladax.evals import words as words_lib

NOISE = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.'
DEPTHS = np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)

NIAH_TEMPLATE = ('Some special magic {type_v} are hidden within the following text. Make sure to '
                 'memorize it. I will quiz you about the {type_v} afterwards.\n{context}\n'
                 'What are all the special magic {type_v} for {query} mentioned in the provided '
                 'text?')
NIAH_PREFIX = ' The special magic {type_v} for {query} mentioned in the provided text are'
VT_TEMPLATE = ('Memorize and track the chain(s) of variable assignment hidden in the following '
               'text.\n\n{context}\nQuestion: Find all variables that are assigned the value '
               '{query} in the text above.')
VT_PREFIX = (' Answer: According to the chain(s) of variable assignment in the text above, {num_v}'
             ' variables are assigned the value {query}, they are:')
CWE_TEMPLATE = ('Below is a numbered list of words. In these words, some appear more often than '
                'others. Memorize the ones that appear most often.\n{context}\nQuestion: What are '
                'the 10 most common words in the above list?')
CWE_PREFIX = ' Answer: The top 10 words that appear most often in the list are:'
FWE_TEMPLATE = ('Read the following coded text and track the frequency of each coded word. Find '
                'the three most frequently appeared coded words. {context}\nQuestion: Do not '
                "provide any explanation. Please ignore the dots '....'. What are the three most "
                'frequently appeared words in the above coded text?')
FWE_PREFIX = (' Answer: According to the coded text above, the three most frequently appeared '
              'words are:')
QA_TEMPLATE = ('Answer the question based on the given documents. Only give me the answer and do '
               'not output any other words.\n\nThe following are given documents.\n\n{context}\n\n'
               'Answer the question based on the given documents. Only give me the answer and do '
               'not output any other words.\n\nQuestion: {query}')
QA_PREFIX = ' Answer:'

# name -> (kind, settings); RULER's synthetic.yaml.
TASKS: dict[str, tuple[str, dict]] = {
    'niah_single_1': ('niah', dict(haystack='noise', key='words', value='numbers')),
    'niah_single_2': ('niah', dict(haystack='essay', key='words', value='numbers')),
    'niah_single_3': ('niah', dict(haystack='essay', key='words', value='uuids')),
    'niah_multikey_1': ('niah', dict(haystack='essay', key='words', value='numbers', keys=4)),
    'niah_multikey_2': ('niah', dict(haystack='needle', key='words', value='numbers')),
    'niah_multikey_3': ('niah', dict(haystack='needle', key='uuids', value='uuids')),
    'niah_multivalue': ('niah', dict(haystack='essay', key='words', value='numbers', values=4)),
    'niah_multiquery': ('niah', dict(haystack='essay', key='words', value='numbers', queries=4)),
    'vt': ('vt', dict(chains=1, hops=4)),
    'cwe': ('cwe', dict(freq_common=30, freq_uncommon=3, common=10)),
    'fwe': ('fwe', dict(alpha=2.0)),
    'qa_1': ('qa', dict(dataset='squad')),
    'qa_2': ('qa', dict(dataset='hotpotqa')),
}
# RULER's tokens_to_generate per kind: the output budget the prompt leaves room for.
BUDGET = {'niah': 128, 'vt': 30, 'cwe': 120, 'fwe': 50, 'qa': 32}
METRIC = {'niah': 'all', 'vt': 'all', 'cwe': 'all', 'fwe': 'all', 'qa': 'part'}
GROUPS = {'niah': [t for t in TASKS if t.startswith('niah')], 'vt': ['vt'],
          'agg': ['cwe', 'fwe'], 'qa': ['qa_1', 'qa_2']}
NO_DATA_TASKS = tuple(t for t in TASKS if not t.startswith('qa'))


class TooLarge(Exception):
  """A haystack size the task's material cannot fill (more words or documents than it has)."""


@dataclasses.dataclass
class Sample:
  prompt: str
  answers: list[str]
  size: int                      # haystack units: noise paragraphs, essay words, needles,
                                 # list words or documents
  needles: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Resources:
  """What generators draw from: essay words, a word pool for keys and lists, QA data."""
  essay_words: list[str]
  keys: list[str]
  pool: list[str]
  qa: dict[str, 'QaData'] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class QaData:
  docs: list[str]
  questions: list[dict]          # {'question', 'answers', 'gold': [doc indices]}

  def answers_by_question(self) -> dict[str, list[str]]:
    return {q['question']: q['answers'] for q in self.questions}


# ---------------------------------------------------------------------------------------------
# Random pieces


def _pick(rng: np.random.Generator, items: Sequence, n: int) -> list:
  return [items[i] for i in rng.choice(len(items), size=n, replace=False)]


def _uuid(rng: np.random.Generator) -> str:
  return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), 'big'), version=4))


def _value(rng, kind: str) -> str:
  return str(int(rng.integers(10**6, 10**7))) if kind == 'numbers' else _uuid(rng)


def _needle(type_v: str, key: str, value: str) -> str:
  return f'One of the special magic {type_v} for {key} is: {value}.'


def _join_query(keys: list[str]) -> str:
  return keys[0] if len(keys) == 1 else ', '.join(keys[:-1]) + ', and ' + keys[-1]


# ---------------------------------------------------------------------------------------------
# Generators: (rng, size, resources, spec, length) -> Sample


def niah(rng, size: int, res: Resources, spec: dict, length: int) -> Sample:
  n_keys, n_values, n_queries = spec.get('keys', 1), spec.get('values', 1), spec.get('queries', 1)
  n_keys = max(n_keys, n_queries)
  type_v = spec['value']
  keys = ([_uuid(rng) for _ in range(n_keys)] if spec['key'] == 'uuids'
          else _pick(rng, res.keys, n_keys))
  values = [[_value(rng, type_v) for _ in range(n_values)] for _ in keys]
  needles = [_needle(type_v, k, v) for k, vs in zip(keys, values) for v in vs]
  order = rng.permutation(len(needles))
  needles = [needles[i] for i in order]
  asked = [int(i) for i in rng.choice(n_keys, size=n_queries, replace=False)]
  queries = [keys[i] for i in asked]
  answers = [v for i in asked for v in values[i]]
  if spec['haystack'] == 'essay':
    words = res.essay_words
    text = ' '.join(words[i % len(words)] for i in range(size))
    sentences = haystack_lib.split_sentences(text)
    depths = sorted(int(d) for d in rng.choice(DEPTHS, size=len(needles), replace=False))
    cuts = [0] + [int(len(sentences) * d / 100) for d in depths] + [len(sentences)]
    parts = []
    for i, needle in enumerate(needles + ['']):
      parts.append(' '.join(sentences[cuts[i]:cuts[i + 1]]))
      if needle:
        parts.append(needle)
    context = ' '.join(p for p in parts if p)
  else:
    if spec['haystack'] == 'noise':
      units = [NOISE] * size
    else:  # distractor needles with fresh keys and values
      taken = set(keys)
      units = []
      for _ in range(size):
        key = _uuid(rng) if spec['key'] == 'uuids' else res.keys[int(rng.integers(len(res.keys)))]
        while key in taken:
          key = _uuid(rng) if spec['key'] == 'uuids' else res.keys[int(rng.integers(len(res.keys)))]
        units.append(_needle(type_v, key, _value(rng, type_v)))
    spots = sorted((int(i) for i in rng.choice(size + 1, size=len(needles), replace=True)),
                   reverse=True)
    for spot, needle in zip(spots, needles):
      units.insert(spot, needle)
    context = '\n'.join(units)
  query = _join_query(queries)
  prompt = (NIAH_TEMPLATE.format(type_v=type_v, context=context, query=query)
            + NIAH_PREFIX.format(type_v=type_v, query=query))
  return Sample(prompt, answers, size, needles)


def _chain(rng, hops: int, letters: int = 5) -> tuple[list[str], list[str], str]:
  names: list[str] = []
  while len(names) < hops + 1:
    name = ''.join(rng.choice(list(string.ascii_uppercase), size=letters))
    if name not in names:
      names.append(name)
  value = str(int(rng.integers(10000, 100000)))
  statements = [f'VAR {names[0]} = {value}'] + [f'VAR {names[i + 1]} = VAR {names[i]}'
                                                 for i in range(hops)]
  return names, statements, value


def _vt_prompt(rng, size: int, hops: int) -> tuple[str, list[str], list[str]]:
  names, statements, value = _chain(rng, hops)
  units = [NOISE] * size
  spots = sorted(int(i) for i in rng.choice(size + 1, size=len(statements), replace=True))
  for j, (spot, statement) in enumerate(zip(spots, statements)):
    units.insert(spot + j, statement)  # + j keeps the chain in order
  context = '\n'.join(units)
  prompt = (VT_TEMPLATE.format(context=context, query=value)
            + VT_PREFIX.format(num_v=len(names), query=value))
  return prompt, names, statements


def vt(rng, size: int, res: Resources, spec: dict, length: int) -> Sample:
  """One chain of hops+1 variables hidden among noise; an in-context example precedes it."""
  example, example_names, _ = _vt_prompt(rng, 5, spec['hops'])
  prompt, names, statements = _vt_prompt(rng, size, spec['hops'])
  return Sample(f'{example} {" ".join(example_names)}\n\n{prompt}', names, size, statements)


def _word_list(rng, pool: list[str], n_words: int, freq_common: int, freq_uncommon: int,
               common: int) -> tuple[str, list[str]]:
  chosen = _pick(rng, pool, n_words)
  top, rest = chosen[:common], chosen[common:]
  listed = top * freq_common + rest * freq_uncommon
  listed = [listed[i] for i in rng.permutation(len(listed))]
  return ' '.join(f'{i + 1}. {w}' for i, w in enumerate(listed)), top


def cwe(rng, size: int, res: Resources, spec: dict, length: int) -> Sample:
  """A numbered list where 10 words repeat often and `size` - 10 rarely; below 4K tokens the
  repetitions are 6 and 1 (RULER's short setting). One worked example precedes the question."""
  n_common = spec['common']
  if length < 4096:
    example_args, args = (20, 3, 1, n_common), (size, 6, 1, n_common)
  else:
    example_args, args = (40, 10, 3, n_common), (size, spec['freq_common'],
                                                 spec['freq_uncommon'], n_common)
  if size > len(res.pool):
    raise TooLarge(f'cwe needs {size} distinct words but the word list has {len(res.pool)}')
  example_context, example_top = _word_list(rng, res.pool, *example_args)
  context, top = _word_list(rng, res.pool, *args)
  example = (CWE_TEMPLATE.format(context=example_context) + CWE_PREFIX + ' '
             + ' '.join(f'{i + 1}. {w}' for i, w in enumerate(example_top)))
  return Sample(f'{example}\n{CWE_TEMPLATE.format(context=context)}{CWE_PREFIX}', top, size)


def _zeta(alpha: float) -> float:
  n = 100000
  return float(np.sum(np.arange(1, n + 1, dtype=np.float64) ** -alpha)) + n ** (1 - alpha) / (
      alpha - 1)


def fwe(rng, size: int, res: Resources, spec: dict, length: int) -> Sample:
  """`size` coded words drawn with Zipf counts ⌊size·k^-α/ζ(α)⌋ over a shuffled vocabulary of
  random 6-letter words whose top word is '....'; the answer is ranks 2-4."""
  vocab: list[str] = []
  seen = set()
  while len(vocab) < 2000:
    w = ''.join(rng.choice(list(string.ascii_lowercase), size=6))
    if w not in seen:
      seen.add(w)
      vocab.append(w)
  vocab[0] = '....'
  alpha = spec['alpha']
  counts = (size * np.arange(1, len(vocab) + 1, dtype=np.float64) ** -alpha
            / _zeta(alpha)).astype(int)
  text = [w for w, c in zip(vocab, counts) for _ in range(c)]
  text = [text[i] for i in rng.permutation(len(text))]
  prompt = FWE_TEMPLATE.format(context=' '.join(text)) + FWE_PREFIX
  return Sample(prompt, vocab[1:4], size)


def qa(rng, size: int, res: Resources, spec: dict, length: int, index: int = 0) -> Sample:
  """The question's gold documents among `size` documents in all, as 'Document i:' blocks."""
  data = res.qa.get(spec['dataset'])
  if data is None:
    raise ConfigError(f'RULER {spec["dataset"]} needs its data file; set config.ruler.'
                      f'{spec["dataset"]}.')
  q = data.questions[index % len(data.questions)]
  gold = list(q['gold'])
  others = [i for i in range(len(data.docs)) if i not in set(gold)]
  extra = max(0, size - len(gold))
  if extra > len(others):
    raise TooLarge(f'{spec["dataset"]} has only {len(data.docs)} documents')
  # A fixed order of distractors, taken as a prefix: one more document only ever adds one.
  chosen = gold + [others[i] for i in rng.permutation(len(others))[:extra]]
  chosen = [chosen[i] for i in rng.permutation(len(chosen))]
  context = '\n\n'.join(f'Document {i + 1}:\n{data.docs[d]}' for i, d in enumerate(chosen))
  prompt = QA_TEMPLATE.format(context=context, query=q['question']) + QA_PREFIX
  return Sample(prompt, q['answers'], size, [data.docs[d] for d in gold])


GENERATORS: dict[str, Callable[..., Sample]] = {'niah': niah, 'vt': vt, 'cwe': cwe, 'fwe': fwe,
                                                'qa': qa}
MIN_SIZE = {'niah': 1, 'vt': 1, 'cwe': 11, 'fwe': 64, 'qa': 1}


def make(task: str, seed, size: int, res: Resources, length: int, index: int = 0) -> Sample:
  kind, spec = TASKS[task]
  rng = np.random.default_rng(seed)
  if kind == 'qa':
    return qa(rng, size, res, spec, length, index)
  return GENERATORS[kind](rng, size, res, spec, length)


def fit(build: Callable[[int], Sample], count: Callable[[str], int], budget: int, min_size: int,
        where: str, start: int | None = None) -> tuple[Sample, int]:
  """(sample, its token count) for the largest haystack size whose prompt has at most `budget`
  tokens: doubling, then bisection. With `start` (the size an earlier sample fitted), that size
  is taken if it fits and otherwise searched below. A size the material cannot fill counts as
  too long."""

  def fits(size):
    try:
      sample = build(size)
    except TooLarge:
      return None
    n = count(sample.prompt)
    return (sample, n) if n <= budget else None

  if start is not None:
    found = fits(start)
    if found is not None:
      return found
  try:
    smallest = build(min_size)
  except TooLarge as e:
    raise ConfigError(f'{where}: {e}; give more material (config.ruler data files).') from None
  best = fits(min_size)
  if best is None:
    raise ConfigError(f'{where}: even the smallest haystack gives {count(smallest.prompt)} '
                      f'tokens, over the {budget} available; use a longer length.')
  lo, hi = min_size, (start if start is not None else min_size * 2)
  while start is None and (found := fits(hi)) is not None:
    lo, hi, best = hi, hi * 2, found
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if (found := fits(mid)) is not None:
      lo, best = mid, found
    else:
      hi = mid
  return best


# ---------------------------------------------------------------------------------------------
# Resources from local files


def read_words(path: str) -> list[str]:
  """A word list: JSON (a list, or RULER's english_words.json dict) or one word per line."""
  if not os.path.exists(path):
    raise ConfigError(f'config.ruler.words={path!r} does not exist; give a word list file or "".')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  try:
    loaded = json.loads(text)
    items = list(loaded.values() if isinstance(loaded, dict) else loaded)
  except json.JSONDecodeError:
    items = text.split()
  out, seen = [], set()
  for w in items:
    w = str(w).strip().lower()
    if w.isalpha() and w not in seen:
      seen.add(w)
      out.append(w)
  return out


def builtin_keys() -> list[str]:
  return [f'{a}-{n}' for a in words_lib.ADJECTIVES for n in words_lib.NOUNS]


def word_pool(words: list[str] | None, size: int, seed: int) -> list[str]:
  """User words, else the built-in nouns, adjectives and verbs topped up with made-up words."""
  base = list(words) if words else sorted(set(words_lib.NOUNS + words_lib.ADJECTIVES
                                              + words_lib.VERBS))
  if len(base) < size:
    base += words_lib.pseudo_words(np.random.default_rng(seed), size - len(base), set(base))
  return base


def read_squad(path: str) -> QaData:
  """SQuAD v2 dev JSON: answerable questions, each with its paragraph as the gold document."""
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  docs, index, questions = [], {}, []
  for article in data['data']:
    for para in article['paragraphs']:
      if para['context'] not in index:
        index[para['context']] = len(docs)
        docs.append(para['context'])
      for qa_item in para['qas']:
        if qa_item.get('is_impossible'):
          continue
        answers = list(dict.fromkeys(a['text'] for a in qa_item['answers']))
        if answers:
          questions.append({'question': qa_item['question'].strip(), 'answers': answers,
                            'gold': [index[para['context']]]})
  return QaData(docs, questions)


def read_hotpotqa(path: str) -> QaData:
  """HotpotQA dev (distractor) JSON: every context paragraph of a question is gold, as RULER."""
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  docs, index, questions = [], {}, []
  for item in data:
    gold = []
    for title, sentences in item['context']:
      doc = f'{title}\n{"".join(sentences)}'
      if doc not in index:
        index[doc] = len(docs)
        docs.append(doc)
      gold.append(index[doc])
    questions.append({'question': item['question'].strip(), 'answers': [item['answer']],
                      'gold': gold})
  return QaData(docs, questions)


def min_size(task: str) -> int:
  return MIN_SIZE[TASKS[task][0]]


def needed_pool(length: int) -> int:
  """Words a cwe list of `length` tokens may need (at least ~1 token per listed word)."""
  return max(64, length // 3 + 64)


def essay_words(docs: list[str]) -> list[str]:
  return ' '.join(docs).split()
