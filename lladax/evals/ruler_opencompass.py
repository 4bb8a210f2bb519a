"""RULER as OpenCompass 0.4.2 builds it: the papers' protocol (LongLLaDA and UltraLLaDA both ran
OpenCompass' ruler datasets, opencompass/datasets/ruler/ruler_{niah,vt,cwe,fwe,qa}.py).

Written from that code, draw for draw: each (task, length) seeds a Python `random.Random` and a
numpy `RandomState` with the dataset's random_seed (42) as its loader seeds the global ones, runs
the same size search (growing the haystack in the official increments and counting whole prompts
in cl100k), then draws the samples in the same order with the same retries. What it keeps of the
official code, on purpose, because the papers' numbers came from it:

- lengths are counted in cl100k_base (`tiktoken` 'gpt-4' in LongLLaDA, 'cl100k_base' in UltraLLaDA:
  one encoding) with tiktoken's `encode`, which refuses special-token text;
- NIAH's singular wording when queries x values = 1 (the template's 'Some'/'are all'/'are'/
  'answers' replaced, 'numbers'/'uuids' without the s), needles always plural; its essay haystack is
  the words of PaulGrahamEssays.jsonl, split into sentences at '. ';
- VT has no in-context example; its noise lines end in a newline and are joined with ' ', a hop
  reads 'VAR X = VAR Y ' (trailing space) and the prompt ends 'they are: ';
- CWE's example answer follows 'are:' with no space ('are:1. w'); its words, and NIAH's
  adjective-noun keys, come from the wonderwords package's lists (2.2.0 in the papers' time);
- FWE's noise word is '...' (three dots) while its question says '....'; the vocabulary has
  length // 50 words; its prompts are fitted to the whole length (no output budget);
- QA: SQuAD distractors come first from the paragraphs of the question's own article; every
  sample of a size shares one document order (a fresh Random(42) shuffles each list); when the
  size reaches the whole corpus the corpus list itself is shuffled in place, as the official code
  does; outputs budget 50 tokens.

One difference, documented: the official sample loops retry failures with a bare `except:` and,
at their smallest size (VT: at any size, as it retries with an unchanged size), retry forever.
Here a sample that still fails after MAX_RETRIES tries at that size raises a ConfigError; every
sample the official code would finish is drawn identically.

Scoring is the evaluators': the share of references found in the prediction (case-insensitive;
QA: any reference), averaged over the samples x 100, rounded to 2 decimals.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import random
import re
import string
import uuid
from typing import Callable, Iterator, Sequence

import numpy as np

from lladax.config import ConfigError
from lladax.evals import oracles

NIAH_TEMPLATE = (
    'Some special magic {type_needle_v} are hidden within the following text. Make sure to '
    'memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all '
    'the special magic {type_needle_v} for {query} mentioned in the provided text? The special '
    'magic {type_needle_v} for {query} mentioned in the provided text are')
NIAH_NEEDLE = 'One of the special magic {type_needle_v} for {key} is: {value}.'
NIAH_NOISE = ('The grass is green. The sky is blue. The sun is yellow. Here we go. There and back '
              'again.')
VT_TEMPLATE = (
    'Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n'
    '{context}\nQuestion: Find all variables that are assigned the value {query} in the text '
    'above. Answer: According to the chain(s) of variable assignment in the text above, {num_v} '
    'variables are assigned the value {query}, they are: ')
VT_NOISE = NIAH_NOISE + '\n'
CWE_TEMPLATE = (
    'Below is a numbered list of words. In these words, some appear more often than others. '
    'Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common '
    'words in the above list? Answer: The top 10 words that appear most often in the list are:')
FWE_TEMPLATE = (
    'Read the following coded text and track the frequency of each coded word. Find the three '
    'most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. '
    "Please ignore the dots '....'. What are the three most frequently appeared words in the "
    'above coded text? Answer: According to the coded text above, the three most frequently '
    'appeared words are:')
QA_TEMPLATE = (
    'Answer the question based on the given documents. Only give me the answer and do not output '
    'any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question '
    'based on the given documents. Only give me the answer and do not output any other words.'
    '\n\nQuestion: {query} Answer:')
QA_DOCUMENT = 'Document {i}:\n{document}'

# lladax's task name -> (kind, the official dataset config's settings); abbr is OpenCompass'.
TASKS: dict[str, tuple[str, dict]] = {
    'niah_single_1': ('niah', dict(abbr='ruler_niah_single_1', type_haystack='repeat',
                                   type_needle_k='words', type_needle_v='numbers')),
    'niah_single_2': ('niah', dict(abbr='ruler_niah_single_2', type_haystack='essay',
                                   type_needle_k='words', type_needle_v='numbers')),
    'niah_single_3': ('niah', dict(abbr='ruler_niah_single_3', type_haystack='essay',
                                   type_needle_k='words', type_needle_v='uuids')),
    'niah_multikey_1': ('niah', dict(abbr='ruler_niah_multikey_1', type_haystack='essay',
                                     type_needle_k='words', type_needle_v='numbers',
                                     num_needle_k=4)),
    'niah_multikey_2': ('niah', dict(abbr='ruler_niah_multikey_2', type_haystack='needle',
                                     type_needle_k='words', type_needle_v='numbers')),
    'niah_multikey_3': ('niah', dict(abbr='ruler_niah_multikey_3', type_haystack='needle',
                                     type_needle_k='uuids', type_needle_v='uuids')),
    'niah_multivalue': ('niah', dict(abbr='ruler_niah_multivalue', type_haystack='essay',
                                     type_needle_k='words', type_needle_v='numbers',
                                     num_needle_v=4)),
    'niah_multiquery': ('niah', dict(abbr='ruler_niah_multiquery', type_haystack='essay',
                                     type_needle_k='words', type_needle_v='numbers',
                                     num_needle_q=4)),
    'vt': ('vt', dict(abbr='ruler_vt', num_chains=1, num_hops=4)),
    'cwe': ('cwe', dict(abbr='ruler_cwe', freq_cw=30, freq_ucw=3, num_cw=10)),
    'fwe': ('fwe', dict(abbr='ruler_fwe', alpha=2.0, coded_wordlen=6)),
    'qa_1': ('qa', dict(abbr='ruler_qa_squad', dataset='squad')),
    'qa_2': ('qa', dict(abbr='ruler_qa_hotpotqa', dataset='hotpotqa')),
}
# tokens_to_generate: the loaders' defaults, and QA's 50 from ruler_qa_gen.py.
TOKENS_TO_GENERATE = {'niah': 128, 'vt': 30, 'cwe': 120, 'fwe': 50, 'qa': 50}
# The order of OpenCompass' ruler summary group (configs/summarizers/groups/ruler.py), whose
# naive average is the papers' Avg.
SUMMARY_ORDER = ('niah_single_1', 'niah_single_2', 'niah_single_3', 'niah_multikey_1',
                 'niah_multikey_2', 'niah_multikey_3', 'niah_multivalue', 'niah_multiquery', 'vt',
                 'fwe', 'cwe', 'qa_1', 'qa_2')
GROUPS = {'niah': [t for t in SUMMARY_ORDER if t.startswith('niah')], 'vt': ['vt'],
          'agg': ['fwe', 'cwe'], 'qa': ['qa_1', 'qa_2']}
ESSAY_TASKS = tuple(t for t, (k, s) in TASKS.items() if s.get('type_haystack') == 'essay')
DATA_TASKS = {'qa_1': 'squad', 'qa_2': 'hotpotqa'}
WONDERWORDS_VERSION = '2.2.0'    # the release pip installed while the papers ran (mid-2025)
# scipy.special.zeta(2.0), which FWE divides by; the same double.
ZETA = {2.0: math.pi ** 2 / 6}
MAX_RETRIES = 100


class _Failed(Exception):
  """A sample over the length (the official code's failed `assert`)."""


# ---------------------------------------------------------------------------------------------
# Material: word lists, keys, essays, QA files


class SortedJoin:
  """sorted(set(f'{a}-{n}' for a in adjs for n in nouns)) as an indexable sequence, without its
  six million strings: `random.choice` needs only its length and item i.

  For adjectives whose 'adj-' is no prefix of another's, the strings starting with it form one
  block ordered as the sorted nouns; adjectives sharing such a prefix ('old', 'old-fashioned')
  interleave, so their block is built in full."""

  def __init__(self, adjs: Sequence[str], nouns: Sequence[str]):
    self.nouns = sorted(set(nouns))
    prefixes = sorted(set(a + '-' for a in adjs))
    self.blocks: list[tuple[str, list[str] | None]] = []
    self.starts: list[int] = []
    total, i = 0, 0
    while i < len(prefixes):
      root, j = prefixes[i], i + 1
      while j < len(prefixes) and prefixes[j].startswith(root):
        j += 1
      if j == i + 1:
        self.blocks.append((root, None))
        size = len(self.nouns)
      else:
        built = sorted({p + n for p in prefixes[i:j] for n in nouns})
        self.blocks.append(('', built))
        size = len(built)
      self.starts.append(total)
      total += size
      i = j
    self.size = total

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < self.size:
      raise IndexError(index)
    b = bisect.bisect_right(self.starts, index) - 1
    prefix, built = self.blocks[b]
    offset = index - self.starts[b]
    return built[offset] if built is not None else prefix + self.nouns[offset]


@dataclasses.dataclass
class WordLists:
  nouns: list[str]
  adjs: list[str]
  verbs: list[str]
  version: str

  def __post_init__(self):
    self._keys = None

  def keys(self) -> SortedJoin:
    """NIAH's 'words' keys: every adjective-noun pair, sorted and deduplicated."""
    if self._keys is None:
      self._keys = SortedJoin(self.adjs, self.nouns)
    return self._keys

  def cwe_words(self, seed: int) -> list[str]:
    words = sorted(set(self.nouns + self.adjs + self.verbs))
    random.Random(seed).shuffle(words)
    return words


_WORDS: dict[str, WordLists] = {}


def wonderwords_lists() -> WordLists:
  """The nouns, adjectives and verbs of the installed wonderwords package, read as the official
  code reads them (random_word._get_words_from_text_file)."""
  try:
    import wonderwords  # pylint: disable=import-outside-toplevel
    from wonderwords import random_word  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError('RULER under the papers\' protocols draws its words from the wonderwords '
                      f'package; pip install wonderwords=={WONDERWORDS_VERSION}.') from None
  version = getattr(wonderwords, '__version__', 'unknown')
  if version not in _WORDS:
    read = random_word._get_words_from_text_file  # pylint: disable=protected-access
    _WORDS[version] = WordLists(read('nounlist.txt'), read('adjectivelist.txt'),
                                read('verblist.txt'), version)
  return _WORDS[version]


def read_essay(path: str) -> list[str]:
  """The essay haystack's words: each JSON line's 'text' stripped, joined with ' ' (and one
  after the last), whitespace runs made one space, split at ' '."""
  if not path or not os.path.isfile(path):
    raise ConfigError(f'config.ruler.essay={path!r} is not a file; give PaulGrahamEssays.jsonl '
                      '(JSON lines with a "text" field), as the papers\' RULER reads.')
  combined = []
  with open(path, 'rb') as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ConfigError(f'config.ruler.essay={path!r} line {n} is not UTF-8 ({e.reason} at '
                          f'byte {e.start}); give PaulGrahamEssays.jsonl as published.') from None
      try:
        combined.append(json.loads(line.strip()).get('text', '').strip() + ' ')
      except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f'config.ruler.essay={path!r} line {n} is not a JSON object; give '
                          'PaulGrahamEssays.jsonl (one {"text": ...} per line).') from None
  return re.sub(r'\s+', ' ', ''.join(combined)).split(' ')


@dataclasses.dataclass
class QaData:
  """The official reader's output: questions (query, outputs, gold document indices and, for
  SQuAD, the other paragraphs of the same article) and the sorted, deduplicated documents."""
  qas: list[dict]
  docs: list[str]


def read_squad(path: str) -> QaData:
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  docs = sorted(set(p['context'] for d in data['data'] for p in d['paragraphs']))
  index = {c: i for i, c in enumerate(docs)}
  qas = []
  for d in data['data']:
    article = [index[p['context']] for p in d['paragraphs']]
    for p in d['paragraphs']:
      own = index[p['context']]
      for q in p['qas']:
        if not q['is_impossible']:
          qas.append({'query': q['question'], 'outputs': [a['text'] for a in q['answers']],
                      'context': [own], 'more_context': [i for i in article if i != own]})
  return QaData(qas, docs)


def read_hotpotqa(path: str) -> QaData:
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  docs = sorted(set(f"{t}\n{''.join(p)}" for d in data for t, p in d['context']))
  index = {c: i for i, c in enumerate(docs)}
  qas = [{'query': d['question'], 'outputs': [d['answer']],
          'context': [index[f"{t}\n{''.join(p)}"] for t, p in d['context']]} for d in data]
  return QaData(qas, docs)


READERS = {'squad': read_squad, 'hotpotqa': read_hotpotqa}


def read_qa(name: str, path: str) -> QaData:
  try:
    return READERS[name](path)
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise ConfigError(f'config.ruler.{name}={path!r} could not be read as {name} ({e!r}); give '
                      'the official dev JSON file.') from None


@dataclasses.dataclass
class Material:
  words: WordLists
  essay: list[str] | None = None
  qa: dict[str, QaData] = dataclasses.field(default_factory=dict)


class Counter:
  """Token counts as the official code counts: tiktoken's `encode` (given as `encode`), which
  raises on text holding a special token's string."""

  def __init__(self, encode: Callable[[str], list[int]]):
    self.encode = encode

  def __call__(self, text: str) -> int:
    return len(self.encode(text))


# ---------------------------------------------------------------------------------------------
# The samples of one (task, length)


def _retry(build: Callable[[int], tuple[str, list]], size: int, step: int, fits, where: str,
           shrink: bool = True) -> tuple[str, list]:
  """The official sample loop: build at `size`; on any failure (an error or a prompt over the
  length) retry, `step` smaller while above `step` (never when `shrink` is False: VT)."""
  stuck = 0
  while True:
    try:
      text, answer = build(size)
      if not fits(text):
        raise _Failed()
      return text, answer
    except Exception as e:  # pylint: disable=broad-except  # the official bare except
      if shrink and size > step:
        size -= step
        continue
      stuck += 1
      if stuck >= MAX_RETRIES:
        raise ConfigError(f'{where}: no sample fits after {MAX_RETRIES} tries at haystack size '
                          f'{size} (last: {e!r}), where OpenCompass would retry forever; use a '
                          'longer length or more material.') from None


def niah(spec: dict, length: int, samples: int, seed: int, count: Counter,
         material: Material, where: str) -> Iterator[tuple[str, list[str]]]:
  rng = random.Random(seed)
  ttg = TOKENS_TO_GENERATE['niah']
  num_k, num_v, num_q = (spec.get('num_needle_k', 1), spec.get('num_needle_v', 1),
                         spec.get('num_needle_q', 1))
  num_k = max(num_k, num_q)
  kind, type_k, type_v = spec['type_haystack'], spec['type_needle_k'], spec['type_needle_v']
  haystack = {'essay': material.essay, 'repeat': NIAH_NOISE, 'needle': NIAH_NEEDLE}[kind]
  keys = material.words.keys() if 'words' in (type_k, type_v) else None
  depths = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]

  def draw(type_needle):
    if type_needle == 'numbers':
      return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if type_needle == 'words':
      return rng.choice(keys)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))

  def build(num_haystack):
    key_list, values, needles = [], [], []
    for _ in range(num_k):
      key_list.append(draw(type_k))
      value = []
      for _ in range(num_v):
        value.append(draw(type_v))
        needles.append(NIAH_NEEDLE.format(type_needle_v=type_v, key=key_list[-1],
                                          value=value[-1]))
      values.append(value)
    random.Random(seed).shuffle(needles)
    if kind == 'essay':
      sentences = [s.strip() for s in ' '.join(haystack[:num_haystack]).split('. ') if s]
      positions = ([0] + sorted(int(len(sentences) * (depth / 100))
                                for depth in rng.sample(depths, len(needles)))
                   + [len(sentences)])
      parts = []
      for i in range(1, len(positions)):
        parts.append(' '.join(sentences[positions[i - 1]:positions[i]]))
        if i - 1 < len(needles):
          parts.append(needles[i - 1])
      context = ' '.join(parts)
    else:
      if kind == 'repeat':
        sentences = [haystack] * num_haystack
      else:
        sentences = [haystack.format(type_needle_v=type_v, key=draw(type_k), value=draw(type_v))
                     for _ in range(num_haystack)]
      for index, element in zip(sorted(rng.sample(range(num_haystack), len(needles)),
                                       reverse=True), needles):
        sentences.insert(index, element)
      context = '\n'.join(sentences)
    chosen = rng.sample(range(num_k), num_q)
    queries = [key_list[i] for i in chosen]
    answers = [a for i in chosen for a in values[i]]
    query = (', '.join(queries[:-1]) + ', and ' + queries[-1] if len(queries) > 1
             else queries[0])
    template, type_named = NIAH_TEMPLATE, type_v
    if num_q * num_v == 1:
      for old, new in (('Some', 'A'), ('are all', 'is'), ('are', 'is'), ('answers', 'answer')):
        template = template.replace(old, new)
      type_named = type_v[:-1]
    return template.format(type_needle_v=type_named, context=context, query=query), answers

  step = {'essay': 500, 'repeat': 25, 'needle': 25}[kind]
  if kind != 'essay' and length < 4096:
    step = 5
  num_haystack, total = step, 0
  while total + ttg < length:
    text, answer = _search_step(build, num_haystack, where)
    total = count(text + ' '.join(answer))
    if total + ttg > length:
      num_haystack -= step
      break
    if kind == 'essay' and num_haystack > len(haystack):
      num_haystack = len(haystack)
      break
    num_haystack += step
  for _ in range(samples):
    yield _retry(build, num_haystack, step, lambda t: count(t) + ttg <= length, where)


def _search_step(build, size, where):
  """One prompt of the size search; the official search has no retry, so a failure is final."""
  try:
    return build(size)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{where}: the haystack size search failed at size {size} ({e!r}); use a '
                      'longer length or check the data files.') from None


def vt(spec: dict, length: int, samples: int, seed: int, count: Counter, material: Material,
       where: str) -> Iterator[tuple[str, list[str]]]:
  del material
  rng, np_rng = random.Random(seed), np.random.RandomState(seed)
  ttg, num_chains, num_hops = TOKENS_TO_GENERATE['vt'], spec['num_chains'], spec['num_hops']

  def name():
    return ''.join(rng.choices(string.ascii_uppercase, k=5)).upper()

  def chains_of():
    names = [name() for _ in range((num_hops + 1) * num_chains)]
    while len(set(names)) < num_chains * (num_hops + 1):
      names.append(name())
    names_ret, chains_ret = [], []
    for i in range(0, len(names), num_hops + 1):
      these = names[i:i + num_hops + 1]
      names_ret.append(these)
      chain = [f'VAR {these[0]} = {np_rng.randint(10000, 99999)}']
      for j in range(num_hops):
        chain.append(f'VAR {these[j + 1]} = VAR {these[j]} ')
      chains_ret.append(chain)
    return names_ret, chains_ret

  def build(num_noises):
    names, chains = chains_of()
    sentences = [VT_NOISE] * num_noises
    if len(sentences) <= len(chains[0]):
      sentences = [n + '.' if len(n.strip()) > 0 else n
                   for n in [x for noise in sentences for x in noise.split('.')]]
      if not len(sentences) > len(chains[0]):
        chains = [chain[:len(sentences) - 1] for chain in chains]
    for chain in chains:
      positions = sorted(rng.sample(range(len(sentences)), len(chain)))
      for at, j in zip(positions, range(len(chain))):
        sentences.insert(at + j, chain[j])
    context = ' '.join(sentences).replace('. \n', '.\n')
    value = chains[0][0].split('=')[-1].strip()
    return VT_TEMPLATE.format(context=context, query=value, num_v=num_hops + 1), names[0]

  step, num_noises, total = 10, 10, 0
  while total + ttg < length:
    text, answer = _search_step(build, num_noises, where)
    total = count(text + f' {answer}')
    if total + ttg > length:
      num_noises -= step
      break
    num_noises += step
  for _ in range(samples):
    # The official loop retries with the size it searched, never smaller.
    yield _retry(build, num_noises, step, lambda t: count(t) + ttg <= length, where,
                 shrink=False)


def cwe(spec: dict, length: int, samples: int, seed: int, count: Counter, material: Material,
        where: str) -> Iterator[tuple[str, list[str]]]:
  rng = random.Random(seed)
  ttg, num_cw = TOKENS_TO_GENERATE['cwe'], spec['num_cw']
  words = material.words.cwe_words(seed)

  def listing(items):
    return ' '.join(f'{i + 1}. {w}' for i, w in enumerate(items))

  def example(num_words, common_repeats, uncommon_repeats):
    full = rng.sample(words, num_words)
    common, uncommon = full[:num_cw], full[num_cw:]
    listed = common * int(common_repeats) + uncommon * int(uncommon_repeats)
    random.Random(seed).shuffle(listed)
    return listing(listed), common

  def build(num_words):
    if length < 4096:
      context_example, answer_example = example(20, 3, 1)
      context, answer = example(num_words, 6, 1)
    else:
      context_example, answer_example = example(40, 10, 3)
      context, answer = example(num_words, spec['freq_cw'], spec['freq_ucw'])
    shown = CWE_TEMPLATE.format(context=context_example, query='') + listing(answer_example)
    return shown + '\n' + CWE_TEMPLATE.format(context=context, query=''), answer

  step, num_words, total = 10, 10, 0
  while total + ttg < length:
    text, answer = _search_step(build, num_words, where)
    total = count(text + ' ' + listing(answer))
    if total + ttg > length:
      num_words -= step
      break
    num_words += step
    if num_words > len(words):
      num_words = len(words)
      break
  for _ in range(samples):
    yield _retry(build, num_words, step, lambda t: count(t) + ttg <= length, where)


def fwe(spec: dict, length: int, samples: int, seed: int, count: Counter, material: Material,
        where: str) -> Iterator[tuple[str, list[str]]]:
  del material
  rng = random.Random(seed)
  alpha, wordlen = spec['alpha'], spec['coded_wordlen']
  vocab_size, step = length // 50, length // 32
  if vocab_size == 0:
    # Where the official code fails with an IndexError on its empty vocabulary.
    raise ConfigError(f'{where}: FWE draws length // 50 words and the length leaves none; use '
                      'a length of at least 50.')

  def vocabulary():
    vocab = [''.join(rng.choices(string.ascii_lowercase, k=wordlen)) for _ in range(vocab_size)]
    while len(set(vocab)) < vocab_size:
      vocab.append(''.join(rng.choices(string.ascii_lowercase, k=wordlen)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = '...'  # the top-ranked word is noise
    return vocab

  def text_of(vocab, num_words):
    k = np.arange(1, len(vocab) + 1)
    counts = num_words * (k ** -alpha) / ZETA[alpha]
    coded = [w for w, n in zip(vocab, counts.astype(int)) for _ in range(n)]
    random.Random(seed).shuffle(coded)
    return FWE_TEMPLATE.format(context=' '.join(coded), query=''), vocab[1:4]

  # The size search: grow until the prompt reaches the length, then one step back.
  vocab = vocabulary()
  num_words = length // wordlen
  text, _ = text_of(vocab, num_words)
  while count(text) < length:
    num_words += step
    text, _ = text_of(vocab, num_words)
  num_words -= step
  for _ in range(samples):
    vocab, used = vocabulary(), num_words
    text, answer = text_of(vocab, used)
    while count(text) > length:
      used -= step
      if used <= 0:
        # Where the official code would shrink for ever: not even the question fits.
        raise ConfigError(f'{where}: the FWE prompt has {count(text)} tokens with no words '
                          'at all, over the length; use a longer length.')
      text, answer = text_of(vocab, used)
    yield text, answer


def qa(spec: dict, length: int, samples: int, seed: int, count: Counter, material: Material,
       where: str) -> Iterator[tuple[str, list[str]]]:
  rng = random.Random(seed)
  ttg = TOKENS_TO_GENERATE['qa']
  data = material.qa[spec['dataset']]
  qas = data.qas
  docs = list(data.docs)  # the official code may shuffle this list in place

  def build_for(index):
    def build(num_docs):
      q = qas[index]
      gold, more = q['context'], q.get('more_context', [])
      if num_docs < len(docs):
        if num_docs - len(gold) > len(more):
          taken = set(gold + more)
          extra = [i for i in range(len(docs)) if i not in taken]
          chosen = gold + more + rng.sample(extra, max(0, num_docs - len(gold) - len(more)))
        else:
          chosen = gold + rng.sample(more, num_docs - len(gold))
        chosen = [docs[i] for i in chosen]
      else:
        chosen = docs
      random.Random(seed).shuffle(chosen)
      context = '\n\n'.join(QA_DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(chosen))
      return QA_TEMPLATE.format(context=context, query=q['query']), q['outputs']
    return build

  step, num_docs, total = 10, 10, 0
  while total + ttg < length:
    text, answer = _search_step(build_for(0), num_docs, where)
    total = count(text + f' {answer}')
    if total + ttg > length:
      num_docs -= step
      break
    num_docs += step
    if num_docs > len(docs):
      num_docs = len(docs)
      break
  for index in range(samples):
    if index >= len(qas):
      raise ConfigError(f'{where}: the {spec["dataset"]} file has {len(qas)} usable questions, '
                        f'fewer than config.ruler.samples={samples}; lower it.')
    yield _retry(build_for(index), num_docs, step, lambda t: count(t) + ttg <= length, where)


GENERATORS = {'niah': niah, 'vt': vt, 'cwe': cwe, 'fwe': fwe, 'qa': qa}


def samples(task: str, length: int, n: int, seed: int, count: Counter,
            material: Material) -> list[tuple[str, list[str]]]:
  """The first `n` (prompt, answers) of `task` at `length` tokens, as OpenCompass draws them
  (the first n of any larger number: each sample depends only on those before it)."""
  kind, spec = TASKS[task]
  where = f'RULER {task} at {length}'
  out = []
  for sample in GENERATORS[kind](spec, length, n, seed, count, material, where):
    out.append(sample)
  return out


# ---------------------------------------------------------------------------------------------
# Scoring


def match(task: str, prediction: str, answers: Sequence[str]) -> float:
  """One sample's evaluator term: the share of answers in the prediction (QA: 1 if any is)."""
  pred = prediction.lower()
  found = [1.0 if r.lower() in pred else 0.0 for r in answers]
  if TASKS[task][0] == 'qa':
    return max(found)
  return sum(found) / len(answers)


def task_score(matches: Sequence[float]) -> float:
  """The evaluator's score: sum over samples / count x 100, rounded to 2 decimals."""
  return round(sum(matches) / len(matches) * 100, 2)


def average_name(tasks: Sequence[str]) -> str:
  """'avg', the papers' Avg, only when all 13 tasks ran; else named for how many did."""
  return 'avg' if len(tasks) == len(SUMMARY_ORDER) else f'avg_{len(tasks)}_tasks'


def summarise(scores: dict[str, dict[str, float]], lengths: Sequence[int]) -> dict:
  """Groups as the papers report them (NIAH, VT, AGG, QA: means of their tasks' scores) and the
  average over the tasks run: 'avg' (OpenCompass' ruler_<len> group, the papers' Avg) when all 13
  ran, else 'avg_<n>_tasks'. Sums run in the summarizer's task order."""
  ran = [t for t in SUMMARY_ORDER if t in scores]
  groups: dict[str, dict[str, float]] = {}
  for name, members in GROUPS.items():
    present = [t for t in members if t in scores]
    if present and len(present) == len(members):
      groups[name] = {str(l): sum(scores[t][str(l)] for t in present) / len(present)
                      for l in lengths}
  groups[average_name(ran)] = {str(l): sum(scores[t][str(l)] for t in ran) / len(ran)
                               for l in lengths}
  return groups


# ---------------------------------------------------------------------------------------------
# Oracle: solves the official prompts from the text (QA by its known answers)


def solve_niah(prompt: str) -> str:
  asked = re.findall(r'What (?:are all|is) the special magic (\w+?)s? for (.+?) mentioned in the '
                     r'provided text\?', prompt)
  if not asked:
    return ''
  kind, query = asked[-1]
  keys = query.split(', and ')
  keys = keys[0].split(', ') + keys[1:] if len(keys) > 1 else keys
  values = []
  for key in keys:
    values += re.findall(rf'One of the special magic {kind}s for {re.escape(key)} is: (\S+?)\.'
                         r'(?=\s|$)', prompt)
  return ' ' + ', '.join(values)


def solve_cwe(prompt: str) -> str:
  section = oracles.last_section(prompt, 'Below is a numbered list of words.')
  section = section.split('\nQuestion:')[0]
  section = section.split('\n', 1)[-1]
  listed = [w for w in re.split(r'(?:^| )\d+\. ', section) if w]
  counts: dict[str, int] = {}
  for w in listed:
    counts[w] = counts.get(w, 0) + 1
  top = sorted(counts, key=lambda w: -counts[w])[:10]
  return ' ' + ' '.join(f'{i + 1}. {w}' for i, w in enumerate(top))


def solve_fwe(prompt: str) -> str:
  text = prompt.split('Find the three most frequently appeared coded words. ', 1)[-1]
  text = text.split('\nQuestion:')[0]
  counts: dict[str, int] = {}
  for w in text.split():
    if w != '...':
      counts[w] = counts.get(w, 0) + 1
  return ' ' + ' '.join(sorted(counts, key=lambda w: -counts[w])[:3])


def solver(qa_answers: dict[str, list[str]]) -> Callable[[str], str]:
  """solve(prompt) for every official RULER prompt; QA prompts are looked up in `qa_answers`
  (prompt -> answers, filled by the job as it builds them)."""

  def solve(prompt: str) -> str:
    if prompt in qa_answers:
      return ' ' + qa_answers[prompt][0]
    if 'special magic' in prompt:
      return solve_niah(prompt)
    if 'chain(s) of variable assignment' in prompt:
      return oracles.ruler_vt(prompt)  # the chain is solved alike in both protocols
    if 'numbered list of words' in prompt:
      return solve_cwe(prompt)
    if 'coded text' in prompt:
      return solve_fwe(prompt)
    return ''

  return solve
