"""Scores of the long-context benchmarks, written from their published definitions.

NeedleBench (NIAH): 100 if the keyword is in the prediction, else 0.2 * 100 * (1 - lev / max_len)
on whitespace-free strings. RULER: case-insensitive substring match, all references (`all`) or any
(`part`). LongBench: per-sample maximum over gold answers of QA F1 (SQuAD normalisation), ROUGE-L,
classification, retrieval, count or code edit similarity; a dataset scores the mean x 100.
Everything here is pure Python: no rouge, jieba or fuzzywuzzy dependency.
"""
from __future__ import annotations

import collections
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
  """fuzzywuzzy's `ratio` with python-Levenshtein: round(100 * 2 LCS / (len a + len b))."""
  if not a and not b:
    return 100
  return int(round(100 * 2 * _lcs_length(a, b) / (len(a) + len(b))))


def code_sim_score(prediction: str, reference: str, **_) -> float:
  """Edit similarity of the first predicted line that is not a comment or a code fence."""
  first = ''
  for line in prediction.lstrip('\n').split('\n'):
    if '`' not in line and '#' not in line and '//' not in line:
      first = line
      break
  return similarity_ratio(first, reference) / 100


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
