"""Scores of the long-context benchmarks, written from their published definitions.

NeedleBench (NIAH): 100 if the keyword is in the prediction, else 0.2 * 100 * (1 - lev / max_len)
on whitespace-free strings. RULER: case-insensitive substring match, all references (`all`) or any
(`part`). LongBench, lladax's reading (protocol 'lladax'): per-sample maximum over gold answers of
QA F1 (SQuAD normalisation), ROUGE-L, classification, retrieval, count or code edit similarity; a
dataset scores the mean x 100; pure Python, no rouge, jieba or fuzzywuzzy dependency.

LongBench as the papers scored it (protocols 'longllada' / 'ultrallada'): OpenCompass 0.4.2's
evaluators (opencompass/datasets/longbench/evaluators.py), the `oc_*` functions below, with the
`rouge` package's ROUGE-L and `jieba` words as they call them (the `eval` extra, imported when
first needed) and fuzzywuzzy's ratio computed here for either of its back ends.
"""
from __future__ import annotations

import collections
import difflib
import importlib
import logging
import re
import string
from typing import Callable, Sequence

ZH_PUNCTUATION = ('！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗'
                  '〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.')


def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions of one character each)."""
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    current = [i]
    for j, cb in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


def needle_score(prediction: str, keyword: str, reference: str) -> float:
  """NeedleBench's score: 100 when `keyword` occurs in the raw prediction; otherwise a fifth of
  the Levenshtein similarity to `reference` (the needle), both stripped of all whitespace, so a
  miss scores a few points rather than zero, as in the papers' heatmaps."""
  if keyword and keyword in prediction:
    return 100.0
  pred = re.sub(r'\s+', '', prediction)
  ref = re.sub(r'\s+', '', reference)
  longest = max(len(pred), len(ref))
  similarity = 100.0 * (1 - levenshtein(pred, ref) / longest) if longest else 100.0
  return 0.2 * similarity


def _plain(text: str) -> str:
  return ' '.join(text.split()).casefold()


def exact_match(prediction: str, reference: str) -> float:
  """100 when the prediction's first line equals `reference`, ignoring case, runs of whitespace
  and a final period (a completion stops where the answer does, or it is not exact)."""
  first = prediction.strip().split('\n', 1)[0] if prediction.strip() else ''
  return 100.0 * (_plain(first).rstrip('.') == _plain(reference).rstrip('.'))


def ruler_postprocess(prediction: str) -> str:
  """RULER strips the prediction and turns control characters into newlines before matching."""
  return re.sub(r'[\x00-\x1f]', '\n', prediction.strip())


def string_match_all(prediction: str, references: Sequence[str]) -> float:
  """RULER's per-sample `all` score: the share of references found (case-insensitive), x 100."""
  pred = prediction.lower()
  return 100.0 * sum(r.lower() in pred for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
  """RULER's per-sample `part` score (QA): 100 if any reference is found (case-insensitive)."""
  pred = prediction.lower()
  return 100.0 * any(r.lower() in pred for r in references)


def normalize_answer(text: str) -> str:
  """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
  text = ''.join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def normalize_zh_answer(text: str) -> str:
  """LongBench's Chinese normalisation: lower case, no punctuation (ASCII and CJK), no spaces."""
  drop = set(string.punctuation + ZH_PUNCTUATION)
  return ''.join(ch for ch in text.lower() if ch not in drop and not ch.isspace())


def zh_tokens(text: str) -> list[str]:
  """Chinese text split into characters, with runs of Latin letters or digits kept as words.

  LongBench segments Chinese with jieba; characters need no dictionary and give the same score
  whenever the answer's words are matched whole, and a finer partial credit otherwise."""
  return re.findall(r'[\u2e80-\u2fff\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff'
                    r'\uf900-\ufaff]|[^\s\u2e80-\u2fff\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf'
                    r'\u4e00-\u9fff\uf900-\ufaff]+', text)


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
  common = collections.Counter(prediction) & collections.Counter(reference)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(prediction), same / len(reference)
  return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, reference: str, **_) -> float:
  return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def qa_f1_zh_score(prediction: str, reference: str, **_) -> float:
  def tokens(text):
    return [t for t in (normalize_zh_answer(w) for w in zh_tokens(text)) if t]
  return token_f1(tokens(prediction), tokens(reference))


def _lcs_length(a: Sequence, b: Sequence) -> int:
  if len(a) < len(b):
    a, b = b, a
  row = [0] * (len(b) + 1)
  for x in a:
    diagonal = 0
    for j, y in enumerate(b, 1):
      diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
  return row[-1]


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
  """ROUGE-L F1 of two token sequences: the longest common subsequence against both lengths."""
  if not prediction or not reference:
    return 0.0
  lcs = _lcs_length(prediction, reference)
  if lcs == 0:
    return 0.0
  precision, recall = lcs / len(prediction), lcs / len(reference)
  return 2 * precision * recall / (precision + recall)


def rouge_score(prediction: str, reference: str, **_) -> float:
  """ROUGE-L F on whitespace tokens, case-sensitive as the `rouge` package LongBench calls."""
  return rouge_l(prediction.split(), reference.split())


def rouge_zh_score(prediction: str, reference: str, **_) -> float:
  return rouge_l(zh_tokens(prediction), zh_tokens(reference))


def classification_score(prediction: str, reference: str, all_classes: Sequence[str] = (),
                         **_) -> float:
  """LongBench's: classes named in the prediction, dropping those inside the gold label; the gold
  class shares its credit with the other matches (1 / matches).

  LongBench drops the gold-substring classes while iterating over the same list, so the match
  right after a dropped one escapes the check; that is reproduced so scores compare."""
  matches = [c for c in all_classes if c in prediction]
  i = 0
  while i < len(matches):
    if matches[i] in reference and matches[i] != reference:
      matches.pop(i)
    i += 1  # after a removal this skips the element that slid into slot i, as LongBench does
  return 1.0 / len(matches) if reference in matches else 0.0


def _share_equal(numbers: list[str], wanted: str) -> float:
  return sum(n == wanted for n in numbers) / len(numbers) if numbers else 0.0


def count_score(prediction: str, reference: str, **_) -> float:
  """The share of numbers in the prediction equal to the gold count."""
  return _share_equal(re.findall(r'\d+', prediction), str(reference))


def retrieval_score(prediction: str, reference: str, **_) -> float:
  """The share of numbers in the prediction equal to the gold 'Paragraph N'."""
  found = re.findall(r'Paragraph (\d+)', reference)
  return _share_equal(re.findall(r'\d+', prediction), found[0]) if found else 0.0


def retrieval_zh_score(prediction: str, reference: str, **_) -> float:
  found = re.findall(r'段落(\d+)', reference)
  return _share_equal(re.findall(r'\d+', prediction), found[0]) if found else 0.0


def similarity_ratio(a: str, b: str) -> int:
  """fuzzywuzzy's `ratio` with python-Levenshtein: round(100 * 2 LCS / (len a + len b)), in the
  floating-point steps python-Levenshtein takes, so that ties round as it does."""
  return fuzz_ratio(a, b, 'levenshtein')


def first_code_line(prediction: str) -> str:
  """The first predicted line holding no code fence (`) and no comment (# or //), else ''."""
  for line in prediction.lstrip('\n').split('\n'):
    if '`' not in line and '#' not in line and '//' not in line:
      return line
  return ''


def code_sim_score(prediction: str, reference: str, backend: str = 'levenshtein', **_) -> float:
  """Edit similarity of the first predicted line that is not a comment or a code fence."""
  return fuzz_ratio(first_code_line(prediction), reference, backend) / 100


METRICS: dict[str, Callable[..., float]] = {
    'qa_f1': qa_f1_score, 'qa_f1_zh': qa_f1_zh_score, 'rouge': rouge_score,
    'rouge_zh': rouge_zh_score, 'classification': classification_score,
    'retrieval': retrieval_score, 'retrieval_zh': retrieval_zh_score, 'count': count_score,
    'code_sim': code_sim_score,
}


def best_over_answers(metric: str, prediction: str, answers: Sequence[str], **kwargs) -> float:
  """LongBench's per-sample score: the best over the gold answers (0..1)."""
  fn = METRICS[metric]
  return max((fn(prediction, a, **kwargs) for a in answers), default=0.0)


# ---------------------------------------------------------------------------------------------
# LongBench as OpenCompass 0.4.2 scores it (the papers' protocols). Each function returns what the
# evaluator adds to its running total for one sample (x 100 / n gives the dataset score), quirks
# included: ROUGE and code similarity keep the best reference, F1 too, while count, retrieval and
# classification add up over the references.

FUZZ_BACKENDS = ('levenshtein', 'difflib')


def fuzz_ratio(a: str, b: str, backend: str = 'levenshtein') -> int:
  """fuzzywuzzy 0.18's `fuzz.ratio`: 100 for equal strings, 0 when one is empty, else
  round(100 * ratio) where ratio is python-Levenshtein's (1 - indel distance / total length,
  i.e. 2 LCS / total length) when that package is installed and difflib's SequenceMatcher
  ratio (its matching blocks, with the junk heuristic) when it is not."""
  if a == b:
    return 100
  if not a or not b:
    return 0
  if backend == 'difflib':
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
  elif backend == 'levenshtein':
    total = len(a) + len(b)
    ratio = 1.0 - (total - 2 * _lcs_length(a, b)) / total
  else:
    raise ValueError(f'fuzz_ratio backend {backend!r} is not one of {FUZZ_BACKENDS}')
  return int(round(100 * ratio))


def _package(name: str):
  """A package of the `eval` extra, imported on first use."""
  try:
    module = importlib.import_module(name)
  except ImportError:
    raise ImportError(f"LongBench's official metrics need the {name!r} package; pip install "
                      "'lladax[eval]'.") from None
  if name == 'jieba':
    module.setLogLevel(logging.WARNING)  # not its dictionary-loading messages in every job log
  return module


def jieba_words(text: str) -> list[str]:
  """jieba's precise-mode words (cut_all=False, HMM on), as OpenCompass cuts Chinese."""
  return list(_package('jieba').cut(text, cut_all=False))


def rouge_l_package(prediction: str, reference: str) -> float:
  """ROUGE-L F of the `rouge` package (1.0.1) as OpenCompass calls it: Rouge().get_scores([p],
  [r], avg=True)['rouge-l']['f'] (sentences split at '.', words as a set, union LCS over the
  sentences); 0 when it raises (an empty hypothesis or reference, or the recursion limit of
  its LCS reconstruction on very long sentences)."""
  rouge = _package('rouge')
  try:
    return rouge.Rouge().get_scores([prediction], [reference], avg=True)['rouge-l']['f']
  except Exception:  # pylint: disable=broad-except  (OpenCompass scores any failure 0)
    return 0.0


def oc_f1_score(prediction: str, references: Sequence[str], language: str = 'en') -> float:
  """LongBenchF1Evaluator: the best token F1 over the references; English tokens after SQuAD
  normalisation, Chinese jieba words each stripped of punctuation and spaces (empty ones
  dropped)."""
  best = 0.0
  for reference in references:
    if language == 'en':
      pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    else:
      pred = [w for w in map(normalize_zh_answer, jieba_words(prediction)) if w]
      ref = [w for w in map(normalize_zh_answer, jieba_words(reference)) if w]
    best = max(best, token_f1(pred, ref))
  return best


def oc_rouge_score(prediction: str, references: Sequence[str], language: str = 'en') -> float:
  """LongBenchRougeEvaluator: the best ROUGE-L over the references. For Chinese the prediction
  and reference become jieba words joined by spaces; the evaluator rebinds the prediction to its
  segmented form, so with several references each one re-segments the previous result."""
  best = 0.0
  for reference in references:
    if language == 'zh':
      prediction = ' '.join(jieba_words(prediction))
      reference = ' '.join(jieba_words(reference))
    best = max(best, rouge_l_package(prediction, reference))
  return best


def oc_count_score(prediction: str, references: Sequence[str]) -> float:
  """LongBenchCountEvaluator: per reference, the share of numbers in the prediction equal to it,
  summed over the references."""
  return sum(_share_equal(re.findall(r'\d+', prediction), str(r)) for r in references)


RETRIEVAL_PATTERN = {'en': r'Paragraph (\d+)', 'zh': r'段落(\d+)'}


def oc_retrieval_score(prediction: str, references: Sequence[str], language: str = 'en') -> float:
  """LongBenchRetrievalEvaluator: per reference, the share of numbers in the prediction equal to
  its paragraph number, summed over the references. A reference naming no paragraph fails there
  (IndexError); lladax's reader refuses such data before generating."""
  total = 0.0
  for reference in references:
    wanted = re.findall(RETRIEVAL_PATTERN[language], reference)
    if not wanted:
      raise ValueError(f'the reference {reference!r} names no paragraph '
                       f'({RETRIEVAL_PATTERN[language]}).')
    total += _share_equal(re.findall(r'\d+', prediction), wanted[0])
  return total


def oc_classification_score(prediction: str, references: Sequence[str],
                            all_classes: Sequence[str]) -> float:
  """LongBenchClassificationEvaluator: per reference, 1 / (classes matched) when the reference
  is among the classes named in the prediction (with LongBench's drop-while-iterating quirk),
  summed over the references. Its fallback to the closest class by difflib never runs: it is
  guarded by `matches != 0`, which a list always is."""
  return sum(classification_score(prediction, r, all_classes=all_classes) for r in references)


def oc_code_sim_score(prediction: str, references: Sequence[str],
                      backend: str = 'levenshtein') -> float:
  """LongBenchCodeSimEvaluator: the best fuzz.ratio / 100 over the references of the first
  predicted line without a code fence or comment (the evaluator rebinds the prediction to that
  line, which picking again leaves unchanged)."""
  line = first_code_line(prediction)
  return max((fuzz_ratio(line, r, backend) / 100 for r in references), default=0.0)
