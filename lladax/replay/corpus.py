"""The miniature's data, built offline from what ships with Python.

Prose: the Python reference's topics (pydoc_data) and the standard library's docstrings, one
document each; a fixed ~5% (by a hash of the document's name) is held out for the evaluation
haystacks and the perplexity text, so no evaluation sees text the model trained on.

Retrieval documents: training prose as the haystack, with one key-value needle, "The secret
code of the lantern is 4821.", at a random depth, and the question at the end with its answer:
"...\nWhat is the secret code of the lantern? The secret code of the lantern is 4821." They are
built by the NIAH job's own Builder with the same template, separator and alignment as the
evaluation, so training and evaluation prompts differ only in length, depth, key and value.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import sysconfig
import zlib

import numpy as np

from lladax import files
from lladax.config import ConfigError
from lladax.evals import niah, words

TEMPLATE = '{context}\n{question} {stem} '  # the answer's digits come next, nothing else
SEPARATOR = '\n'
ALIGN_TO = ' '          # needles and haystack ends fall between words
MIN_PROSE_CHARS = 200   # shorter docstrings are signatures and one-liners, not prose


@dataclasses.dataclass(frozen=True)
class Prose:
  train: list[str]
  held_out: list[str]


def _docstrings(stdlib: str) -> list[tuple[str, str]]:
  out = []
  for path in sorted(glob.glob(os.path.join(stdlib, '*.py')) +
                     glob.glob(os.path.join(stdlib, '*', '*.py'))):
    rel = os.path.relpath(path, stdlib)
    if 'test' in rel or rel.startswith(('idlelib', 'site-packages')):
      continue
    try:
      with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_PROSE_CHARS:
          out.append((f'{rel}:{getattr(node, "name", "")}:{getattr(node, "lineno", 0)}', doc))
  return out


def _topics() -> list[tuple[str, str]]:
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  return [(f'topic:{k}', v.strip()) for k, v in sorted(topics.topics.items()) if v.strip()]


def prose(held_out_every: int = 20, limit: int = 0) -> Prose:
  """Python's own prose split by a stable hash of each document's name; `limit` > 0 keeps the
  first `limit` documents of each split (smoke runs)."""
  docs = _topics() + _docstrings(sysconfig.get_paths()['stdlib'])
  if not docs:
    raise ConfigError('found no prose in this Python installation (pydoc_data topics and '
                      'standard-library docstrings); the miniature needs a full CPython install.')
  train, held = [], []
  for name, text in docs:
    (held if zlib.crc32(name.encode()) % held_out_every == 0 else train).append(text)
  if limit:
    train, held = train[:limit], held[:limit]
  return Prose(train, held)


def needles(seed: int, count: int, digits: int) -> list[dict]:
  """Key-value needles in the NIAH job's record format; keys are nouns, values `digits` digits."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    key = words.NOUNS[int(rng.integers(len(words.NOUNS)))]
    value = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    out.append(dict(needle=f'The secret code of the {key} is {value}.',
                    question=f'What is the secret code of the {key}?',
                    stem=f'The secret code of the {key} is', keyword=value, answer=value))
  return out


def niah_settings(lengths, length_buffer: int, **overrides) -> niah.NiahConfig:
  """The NIAH settings shared by the training documents and the evaluation grid: lladax's own
  NIAH protocol, whose template, separator and alignment the key-value needles need."""
  return niah.NiahConfig(protocol='lladax', grid='custom', lengths=tuple(int(l) for l in lengths),
                         length_buffer=length_buffer, template=TEMPLATE, separator=SEPARATOR,
                         align_to=ALIGN_TO, **overrides)


def retrieval_documents(haystack: list[str], needle_list: list[dict], tokenizer,
                        **kwargs) -> list[str]:
  """`count` documents of min_length..max_length tokens (uniform), each a NIAH prompt at a
  uniform depth followed by its answer and a period."""
  return [prompt + answer for prompt, answer in retrieval_records(haystack, needle_list,
                                                                  tokenizer, **kwargs)]


def retrieval_records(haystack: list[str], needle_list: list[dict], tokenizer, *, count: int,
                      min_length: int, max_length: int, length_buffer: int,
                      seed: int) -> list[tuple[str, str]]:
  """(prompt, answer) of each retrieval document: the prompt is exactly what the NIAH job asks,
  the answer the value and a period."""
  if min_length <= length_buffer:
    raise ConfigError(f'retrieval documents of {min_length} tokens leave no haystack after the '
                      f'{length_buffer}-token question budget; raise the shortest length.')
  tail = max(len(tokenizer.encode(f'{SEPARATOR}{n["question"]} {n["stem"]} {n["answer"]}.'))
             for n in needle_list) + 2
  if tail > length_buffer:
    raise ConfigError(f'config.replay.length_buffer={length_buffer} is less than the {tail} '
                      'tokens a question, its answer, BOS and EOS can take; raise it to at least '
                      f'{tail} so no document outgrows its length.')
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_length, max_length + 1, count)
  depths = rng.uniform(0, 100, count)
  cfg = niah_settings((max_length,), length_buffer, seed=seed)
  out = []
  for i in range(count):
    # A Builder caches one haystack per draw; each document is its own draw, so none is reused.
    cell = niah.Builder(cfg, needle_list, haystack, tokenizer).cell(
        int(lengths[i]), float(depths[i]), i)
    out.append((cell['prompt'], needle_list[cell['needle']]['answer'] + '.'))
  return out


def prose_chunks(docs: list[str], tokenizer, *, count: int, longest: int,
                 seed: int) -> list[str]:
  """`count` pieces of training prose at random documents and offsets, each at most `longest`
  tokens with BOS and EOS (so it fills one SFT row alone), cut between words."""
  rng = np.random.default_rng(seed)
  budget = longest - 2
  out = []
  while len(out) < count:
    doc = docs[int(rng.integers(len(docs)))]
    start = int(rng.integers(0, max(1, len(doc) - budget)))
    start = doc.find(' ', start) + 1 if start else 0   # 0 when there is no later space
    piece = doc[start:start + budget]
    while len(tokenizer.encode(piece)) > budget:     # multi-byte characters
      piece = piece[:int(len(piece) * 0.9)]
    piece = piece[:piece.rfind(' ')] if ' ' in piece and start + budget < len(doc) else piece
    if piece.strip():
      out.append(piece)
  return out


def write_jsonl(path: str, records: list) -> str:
  """One JSON record per line: {'text': r} for a string, r itself for a mapping."""
  with files.replacing(path) as f:
    for r in records:
      f.write(json.dumps({'text': r} if isinstance(r, str) else r) + '\n')
  return path


def build(rcfg, tokenizer, directory: str, seed: int) -> dict[str, str]:
  """Writes the miniature's data into `directory` (once: a manifest of the settings lets a rerun
  reuse it) and returns the paths: prose, retrieval_pre, retrieval_post, retrieval_sft (records up
  to instruct_longest), retrieval_sft_long (up to T) (training), haystack, needles, ppl
  (evaluation, held out)."""
  files = {k: os.path.join(directory, f) for k, f in (
      ('prose', 'prose_train.jsonl'), ('retrieval_pre', 'retrieval_pretrain.jsonl'),
      ('retrieval_post', 'retrieval_posttrain.jsonl'),
      ('retrieval_sft', 'retrieval_instruct.jsonl'),
      ('retrieval_sft_long', 'retrieval_instruct_long.jsonl'),
      ('haystack', 'haystack_held_out.jsonl'),
      ('needles', 'needles_eval.jsonl'), ('ppl', 'ppl_held_out.txt'))}
  manifest_path = os.path.join(directory, 'manifest.json')
  manifest = {'seed': seed, 'settings': {k: getattr(rcfg, k) for k in (
      'train_length', 'post_multiple', 'multiples', 'pre_documents', 'post_documents',
      'instruct_documents', 'instruct_prose_documents', 'instruct_longest', 'value_digits',
      'length_buffer', 'held_out_every', 'prose_limit')}}
  manifest = json.loads(json.dumps(manifest))
  if os.path.exists(manifest_path) and all(os.path.exists(p) for p in files.values()):
    with open(manifest_path, encoding='utf-8') as f:
      if json.load(f) == manifest:
        return files
  os.makedirs(directory, exist_ok=True)
  text = prose(rcfg.held_out_every, rcfg.prose_limit)
  t = rcfg.train_length
  train_needles = needles(seed, 4096, rcfg.value_digits)
  common = dict(length_buffer=rcfg.length_buffer)
  shortest = rcfg.length_buffer + 16   # some haystack in every document
  write_jsonl(files['prose'], text.train)
  write_jsonl(files['retrieval_pre'], retrieval_documents(
      text.train, train_needles, tokenizer, count=rcfg.pre_documents,
      min_length=max(shortest, t // 3), max_length=t, seed=seed, **common))
  write_jsonl(files['retrieval_post'], retrieval_documents(
      text.train, train_needles, tokenizer, count=rcfg.post_documents,
      min_length=max(shortest, t // 2),
      max_length=rcfg.post_length, seed=seed + 1, **common))
  for name, longest, seeds in (('retrieval_sft', rcfg.instruct_length, (3, 4, 5)),
                               ('retrieval_sft_long', t, (6, 7, 8))):
    records = retrieval_records(
        text.train, train_needles, tokenizer, count=rcfg.instruct_documents,
        min_length=shortest, max_length=longest, seed=seed + seeds[0], **common)
    # Prose with an empty prompt is noised whole: LLaDA's pre-training loss inside the SFT
    # stage, so the fine-tuned model keeps its language model (without it, every mask became a
    # digit).
    records += [('', chunk) for chunk in prose_chunks(
        text.train, tokenizer, count=rcfg.instruct_prose_documents, longest=longest,
        seed=seed + seeds[1])]
    order = np.random.default_rng(seed + seeds[2]).permutation(len(records))
    write_jsonl(files[name], [{'prompt': records[i][0], 'answer': records[i][1]} for i in order])
  write_jsonl(files['haystack'], text.held_out)
  write_jsonl(files['needles'], needles(seed + 2, 64, rcfg.value_digits))
  ppl_text = '\n\n'.join(text.held_out)
  need, have = max(rcfg.lengths), len(tokenizer.encode(ppl_text))
  if have < need:
    raise ConfigError(f'the held-out prose has {have} tokens, fewer than the longest evaluation '
                      f'length {need}; lower config.replay.multiples or raise prose_limit.')
  with open(files['ppl'], 'w', encoding='utf-8') as f:
    f.write(ppl_text)
  with open(manifest_path, 'w', encoding='utf-8') as f:
    json.dump(manifest, f)
  return files
