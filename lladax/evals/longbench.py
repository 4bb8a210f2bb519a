"""LongBench (v1, and LongBench-E) over a local folder of its JSON-lines files, as the papers ran
it or as lladax reads it (`config.longbench.protocol`).

'longllada' (default) and 'ultrallada': OpenCompass 0.4.2's LongBench, which both papers ran with
the LLaDACausalLM wrapper (no meta template, so no chat template). Each dataset's prompt and
max_out_len are its OpenCompass config's (configs/datasets/longbench/*/longbench_*_gen_*.py: qasper
has the hotpotqa prompt and 32 tokens, narrativeqa says "as concisely", multi_news ends with
"Summary:\n"), filled as OpenCompass fills a template: each field the dataset's loader keeps
('input', 'context'), then the output column with '', replaced in turn, so a placeholder inside a
field is filled by the fields after it. The prompt is tokenized as the protocol says (the
tokenizer's own special tokens) and, when longer than max_length tokens, cut on the token ids
(never decoded back to text) to ids[:m // 2] + ids[-m // 2:] (Python's -m // 2: an odd m keeps
the extra token at the end). max_length is LongLLaDA's 7500 ("8k"; 3500 is its "4k") and
UltraLLaDA's 16000. The generation length is max_out_len rounded up to whole blocks of 64, steps
512 capped at it; every generated token is decoded. trec, triviaqa, samsum and lsht keep the
first line of the output (lstrip('\n'), then up to the first '\n'); no stop words. Scores are
OpenCompass' evaluators (metrics.oc_*): QA F1 (jieba words for Chinese), ROUGE-L of the `rouge`
package (on jieba words for Chinese), classification, retrieval, count, and code similarity as
fuzzywuzzy's ratio with python-Levenshtein (OpenCompass' requirements install it; `code_sim=
'difflib'` is fuzzywuzzy without it). A dataset scores sum / n x 100. The results hold the six
category means (SD, MD, Sum, ICL, Syn, Code), their mean (OpenCompass' `longbench` summary
group), the mean over datasets, the question-weighted mean UltraLLaDA reports, and the English
and Chinese groups of OpenCompass' summarizer.

'lladax': THUDM/LongBench's own pred.py and metrics as lladax reads them: its
config/dataset2prompt.json and dataset2maxlen.json (reproduced below; a local copy of either file
overrides them), middle truncation of prompts longer than `max_length` tokens (3500; the first
and last max_length/2 tokens are kept, decoded back to text), optional chat template except for
the few-shot and code sets, and pure-Python metrics (metrics.py): the best score over a sample's
gold answers, averaged, x 100; characters rather than jieba words for Chinese.

Groups: single-doc QA, multi-doc QA, summarisation, few-shot, synthetic, code; 'avg' is the mean
over datasets and 'weighted_avg' the question-weighted mean. Outputs: longbench_results.json,
longbench_results.csv and longbench_cells.jsonl (finished samples, for resuming).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
from typing import Callable

from lladax import sampler
from lladax.config import ConfigError, choice, parse
from lladax.data import tokenizers
from lladax.evals import eval_settings, loading, metrics, model_calls, oracles, protocols, results

# ---------------------------------------------------------------------------------------------
# lladax's reading of THUDM/LongBench (protocol 'lladax')

PROMPTS = {
    'narrativeqa': 'You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',  # pylint: disable=line-too-long
    'qasper': 'You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',  # pylint: disable=line-too-long
    'multifieldqa_en': 'Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:',  # pylint: disable=line-too-long
    'multifieldqa_zh': '阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：',
    'hotpotqa': 'Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:',  # pylint: disable=line-too-long
    'dureader': '请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：',
    'gov_report': 'You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:',  # pylint: disable=line-too-long
    'qmsum': 'You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:',  # pylint: disable=line-too-long
    'multi_news': 'You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:',  # pylint: disable=line-too-long
    'vcsum': '下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：',
    'trec': 'Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}',  # pylint: disable=line-too-long
    'triviaqa': 'Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}',  # pylint: disable=line-too-long
    'samsum': 'Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}',  # pylint: disable=line-too-long
    'lsht': '请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}',
    'passage_count': 'There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ',  # pylint: disable=line-too-long
    'passage_retrieval_en': 'Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: ',  # pylint: disable=line-too-long
    'passage_retrieval_zh': '以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
    'lcc': 'Please complete the code given below. \n{context}Next line of code:\n',
    'repobench-p': 'Please complete the code given below. \n{context}{input}Next line of code:\n',
}
PROMPTS['2wikimqa'] = PROMPTS['musique'] = PROMPTS['hotpotqa']

MAX_NEW_TOKENS = {
    'narrativeqa': 128, 'qasper': 128, 'multifieldqa_en': 64, 'multifieldqa_zh': 64,
    'hotpotqa': 32, '2wikimqa': 32, 'musique': 32, 'dureader': 128, 'gov_report': 512,
    'qmsum': 512, 'multi_news': 512, 'vcsum': 512, 'trec': 64, 'triviaqa': 32, 'samsum': 128,
    'lsht': 64, 'passage_count': 32, 'passage_retrieval_en': 32, 'passage_retrieval_zh': 32,
    'lcc': 64, 'repobench-p': 64,
}

METRIC = {
    'narrativeqa': 'qa_f1', 'qasper': 'qa_f1', 'multifieldqa_en': 'qa_f1',
    'multifieldqa_zh': 'qa_f1_zh', 'hotpotqa': 'qa_f1', '2wikimqa': 'qa_f1', 'musique': 'qa_f1',
    'dureader': 'rouge_zh', 'gov_report': 'rouge', 'qmsum': 'rouge', 'multi_news': 'rouge',
    'vcsum': 'rouge_zh', 'trec': 'classification', 'triviaqa': 'qa_f1', 'samsum': 'rouge',
    'lsht': 'classification', 'passage_retrieval_en': 'retrieval', 'passage_count': 'count',
    'passage_retrieval_zh': 'retrieval_zh', 'lcc': 'code_sim', 'repobench-p': 'code_sim',
}

GROUPS = {
    'single_doc_qa': ['narrativeqa', 'qasper', 'multifieldqa_en', 'multifieldqa_zh'],
    'multi_doc_qa': ['hotpotqa', '2wikimqa', 'musique', 'dureader'],
    'summarization': ['gov_report', 'qmsum', 'multi_news', 'vcsum'],
    'few_shot': ['trec', 'triviaqa', 'samsum', 'lsht'],
    'synthetic': ['passage_count', 'passage_retrieval_en', 'passage_retrieval_zh'],
    'code': ['lcc', 'repobench-p'],
}
# No chat template for these (LongBench pred.py). Only the first output line is scored (pred.py,
# and OpenCompass' trec/triviaqa/samsum/lsht postprocessors alike).
NO_CHAT = ('trec', 'triviaqa', 'samsum', 'lsht', 'lcc', 'repobench-p')
FIRST_LINE = ('trec', 'triviaqa', 'samsum', 'lsht')
# samsum also stops at a newline (LongBench adds "\n" to the EOS ids).
STOP = {'samsum': ('\n',)}


# ---------------------------------------------------------------------------------------------
# The papers' protocol: OpenCompass 0.4.2's LongBench configs, loaders and evaluators

OC_PROMPTS = {
    'narrativeqa': 'You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',  # pylint: disable=line-too-long
    'multifieldqa_en': PROMPTS['multifieldqa_en'],
    'multifieldqa_zh': PROMPTS['multifieldqa_zh'],
    'hotpotqa': PROMPTS['hotpotqa'],
    'dureader': PROMPTS['dureader'],
    'gov_report': PROMPTS['gov_report'],
    'qmsum': PROMPTS['qmsum'],
    'multi_news': 'You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:\n',  # pylint: disable=line-too-long
    'vcsum': PROMPTS['vcsum'],
    'trec': PROMPTS['trec'],
    'triviaqa': PROMPTS['triviaqa'],
    'samsum': PROMPTS['samsum'],
    'lsht': PROMPTS['lsht'],
    'passage_count': PROMPTS['passage_count'],
    'passage_retrieval_en': PROMPTS['passage_retrieval_en'],
    'passage_retrieval_zh': PROMPTS['passage_retrieval_zh'],
    'lcc': PROMPTS['lcc'],
    'repobench-p': PROMPTS['repobench-p'],
}
# qasper has the multi-document QA prompt in OpenCompass (not LongBench's qasper prompt).
OC_PROMPTS['qasper'] = OC_PROMPTS['2wikimqa'] = OC_PROMPTS['musique'] = OC_PROMPTS['hotpotqa']
OC_PROMPTS = {d: OC_PROMPTS[d] for d in METRIC}

OC_MAX_OUT_LEN = dict(MAX_NEW_TOKENS, qasper=32)

# The loaders of these keep only the context (and the answers); the others the input first, then
# the context. trec and lsht keep their answers and classes as the output column 'all_labels'.
OC_CONTEXT_ONLY = ('gov_report', 'multi_news', 'vcsum', 'passage_count', 'lcc')
OC_LABELS = ('trec', 'lsht')
# The evaluators that add a term per reference (the others add the best over the references).
OC_PER_REFERENCE = ('count', 'retrieval', 'retrieval_zh', 'classification')
# The packages (the `eval` extra) OpenCompass' evaluators need, by metric.
OC_PACKAGES = {'qa_f1_zh': ('jieba',), 'rouge': ('rouge',), 'rouge_zh': ('rouge', 'jieba')}

# Category labels of UltraLLaDA's table; OpenCompass' summarizer groups (the same members).
LABELS = {'single_doc_qa': 'SD', 'multi_doc_qa': 'MD', 'summarization': 'Sum',
          'few_shot': 'ICL', 'synthetic': 'Syn', 'code': 'Code'}
ZH = ('multifieldqa_zh', 'dureader', 'vcsum', 'lsht', 'passage_retrieval_zh', 'lcc',
      'repobench-p')
# In the summarizer's order (the mean adds them up in it); code counts in both.
EN = ('narrativeqa', 'qasper', 'multifieldqa_en', 'hotpotqa', '2wikimqa', 'musique', 'gov_report',
      'qmsum', 'multi_news', 'trec', 'triviaqa', 'samsum', 'passage_count', 'passage_retrieval_en',
      'lcc', 'repobench-p')
# The prompt length in tokens each protocol keeps (LongLLaDA's "8k"; its "4k" is 3500).
MAX_LENGTH = {'longllada': 7500, 'ultrallada': 16000, 'lladax': 3500}
PAPER_MAX_LENGTHS = {'longllada': (3500, 7500), 'ultrallada': (16000,), 'lladax': ()}
# The average each paper prints: UltraLLaDA's AVG weighs datasets by their questions; LongLLaDA's
# Avg is OpenCompass' `longbench` summary group, the mean of the six category means.
PAPER_AVERAGE = {'longllada': 'categories', 'ultrallada': 'questions'}


@dataclasses.dataclass(frozen=True)
class LongBenchConfig:
  """`config.longbench`."""
  protocol: str = 'longllada'     # longllada | ultrallada (OpenCompass 0.4.2, as the papers ran
                                  # it) | lladax (THUDM/LongBench's pred.py, see the docstring)
  data_dir: str = ''              # folder of LongBench's <dataset>.jsonl files (its data.zip; a
                                  # folder holding them under data/ works too)
  datasets: tuple[str, ...] = ()  # () = every LongBench dataset with a file in data_dir
  longbench_e: bool = False       # read <dataset>_e.jsonl and also score by length bucket
                                  # (0-4k, 4-8k, 8k+)
  max_length: int = 0             # prompt tokens kept, first and last halves; 0 = the protocol's
                                  # (longllada 7500, or 3500 for its "4k"; ultrallada 16000;
                                  # lladax 3500)
  block_length: int = 64
  steps: int = 512                # capped at each dataset's (rounded) output length
  chat_template: bool = False     # LLaDA-Instruct's template, except for the few-shot and code
                                  # sets; the papers used none, even for instruct models
  code_sim: str = 'levenshtein'   # fuzzywuzzy's ratio with python-Levenshtein (as OpenCompass'
                                  # requirements install) | difflib (fuzzywuzzy without it)
  prompts: str = ''               # a JSON file {dataset: prompt} to use instead of the built-in
  max_new_tokens: str = ''        # a JSON file {dataset: tokens} to use instead of the built-in
  limit: int = 0                  # first N samples per dataset (0 = all)

  def __post_init__(self):
    protocols.check(self.protocol, 'config.longbench.protocol')
    choice(self.code_sim, metrics.FUZZ_BACKENDS, 'config.longbench.code_sim')
    unknown = [d for d in self.datasets if d not in METRIC]
    if unknown:
      raise ConfigError(f'config.longbench.datasets has {unknown[0]!r}, not a LongBench dataset; '
                        f'choose from {", ".join(METRIC)}.')
    if self.max_length and self.max_length < 2:
      raise ConfigError('config.longbench.max_length must be at least 2 tokens (0 = the '
                        "protocol's).")

  @property
  def papers(self) -> bool:
    return self.protocol in protocols.PAPERS

  @property
  def prompt_length(self) -> int:
    return self.max_length or MAX_LENGTH[self.protocol]


def deviations(cfg: LongBenchConfig, sample: sampler.SamplerConfig) -> list[str]:
  """The settings of a papers' protocol run that differ from what the papers ran."""
  if not cfg.papers:
    return []
  out = []
  if cfg.prompt_length not in PAPER_MAX_LENGTHS[cfg.protocol]:
    out.append(f'max_length={cfg.prompt_length} (protocol {cfg.protocol}: '
               f'{" or ".join(map(str, PAPER_MAX_LENGTHS[cfg.protocol]))})')
  paper = dict(block_length=64, steps=512, chat_template=False, code_sim='levenshtein',
               longbench_e=False, prompts='', max_new_tokens='', limit=0)
  out += [f'{k}={getattr(cfg, k)!r} (protocol {cfg.protocol}: {v!r})' for k, v in paper.items()
          if getattr(cfg, k) != v]
  return out + protocols.sampler_deviations(sample, cfg.protocol)


def check_packages(cfg: LongBenchConfig, datasets) -> None:
  """Before the model loads: the packages the chosen datasets' official metrics need."""
  if not cfg.papers:
    return  # lladax's metrics are pure Python
  for d in datasets:
    for name in OC_PACKAGES.get(METRIC[d], ()):
      if importlib.util.find_spec(name) is None:
        raise ConfigError(f"{d}'s OpenCompass metric needs the {name!r} package, which is not "
                          "installed; pip install 'lladax[eval]'.")


def _json_file(path: str, where: str) -> dict:
  if not os.path.exists(path):
    raise ConfigError(f'{where}={path!r} does not exist; give the LongBench config file or "".')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def dataset_files(cfg: LongBenchConfig) -> dict[str, str]:
  """Dataset name -> its local .jsonl file (in data_dir, or in data_dir/data as the Hugging Face
  copy and OpenCompass' data folder hold them)."""
  if not cfg.data_dir or not os.path.isdir(cfg.data_dir):
    raise ConfigError(f'config.longbench.data_dir={cfg.data_dir!r} is not a folder; unpack '
                      "LongBench's data.zip and point it at the folder of .jsonl files.")
  suffix = '_e' if cfg.longbench_e else ''
  names = cfg.datasets or tuple(METRIC)
  files = {}
  for d in names:
    flat = os.path.join(cfg.data_dir, f'{d}{suffix}.jsonl')
    nested = os.path.join(cfg.data_dir, 'data', f'{d}{suffix}.jsonl')
    files[d] = nested if not os.path.exists(flat) and os.path.exists(nested) else flat
  missing = [d for d, p in files.items() if not os.path.exists(p)]
  if cfg.datasets and missing:
    raise ConfigError(f'{files[missing[0]]} does not exist; put the file there or drop '
                      f'{missing[0]!r} from config.longbench.datasets.')
  files = {d: p for d, p in files.items() if d not in missing}
  if not files:
    raise ConfigError(f'{cfg.data_dir} holds no LongBench file (<dataset>{suffix}.jsonl).')
  if missing:
    logging.warning('LongBench: %s has no file for %s; those are left out of the averages.',
                    cfg.data_dir, ', '.join(missing))
  return files


def required_keys(dataset: str, template: str) -> tuple[str, ...]:
  """The record fields a dataset's prompt and score read."""
  keys = ('input', 'context') if '{input}' in template else ('context',)
  return keys + ('answers',) + (('all_classes',) if dataset in OC_LABELS else ())


def _check_record(record, keys, dataset: str, where: str) -> None:
  if not isinstance(record, dict):
    raise ConfigError(f'{where} is not a JSON object; a LongBench record is one per line.')
  for key in keys:
    if key not in record:
      raise ConfigError(f'{where} has no {key!r}; a {dataset} record needs {", ".join(keys)}.')
  answers = record['answers']
  if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
    raise ConfigError(f'{where}: "answers" must be a list of strings.')
  if 'all_classes' in keys and not (isinstance(record['all_classes'], list)
                                    and all(isinstance(c, str) for c in record['all_classes'])):
    raise ConfigError(f'{where}: "all_classes" must be a list of strings for {dataset}.')
  if METRIC[dataset].startswith('retrieval'):
    pattern = metrics.RETRIEVAL_PATTERN['zh' if dataset.endswith('_zh') else 'en']
    for answer in answers:
      if not re.search(pattern, answer):
        raise ConfigError(f'{where}: the answer {answer!r} names no paragraph ({pattern}), '
                          "which LongBench's retrieval score needs.")


def read_samples(path: str, limit: int = 0, dataset: str | None = None,
                 keys: tuple[str, ...] = ()) -> list[dict]:
  """The records of a LongBench .jsonl file (blank lines skipped); a malformed line, or one
  without `keys`, is refused naming the file and line."""
  out = []
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      where = f'{path} line {number}'
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ConfigError(f'{where} is not UTF-8 ({e.reason} at byte {e.start}); fix or delete '
                          'that line.') from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f'{where} is not JSON ({e.msg}, column {e.colno}); fix or delete '
                          'that line.') from None
      if dataset is not None:
        _check_record(record, keys, dataset, where)
      out.append(record)
      if limit and len(out) >= limit:
        break
  if not out:
    raise ConfigError(f'{path} holds no records; give a LongBench .jsonl file or leave the '
                      'dataset out of config.longbench.datasets.')
  return out


def truncate_middle(prompt: str, tok, max_length: int) -> str:
  """LongBench's truncation: when the prompt has more than max_length tokens keep the first and
  the last max_length // 2, decoded back to text."""
  ids = tok.encode(prompt)
  if len(ids) <= max_length:
    return prompt
  half = max_length // 2
  return tok.decode(ids[:half]) + tok.decode(ids[-half:])


def build_prompt(dataset: str, sample: dict, template: str, tok, cfg: LongBenchConfig) -> str:
  prompt = template.format(**{k: v for k, v in sample.items() if isinstance(v, str)})
  prompt = truncate_middle(prompt, tok, cfg.prompt_length)
  return with_chat_template(dataset, prompt, cfg)


def with_chat_template(dataset: str, prompt: str, cfg: LongBenchConfig) -> str:
  if cfg.chat_template and dataset not in NO_CHAT:
    # The BOS the generator adds stands for the template's; the rest is the template's text.
    prompt = tokenizers.chat_template([{'role': 'user', 'content': prompt}], bos_token='')
  return prompt


def postprocess(dataset: str, prediction: str) -> str:
  for stop in STOP.get(dataset, ()):
    prediction = prediction.split(stop, 1)[0]
  return oc_postprocess(dataset, prediction)


def score(dataset: str, prediction: str, sample: dict, code_sim: str = 'levenshtein') -> float:
  return metrics.best_over_answers(METRIC[dataset], postprocess(dataset, prediction),
                                   sample['answers'], all_classes=sample.get('all_classes') or (),
                                   backend=code_sim)


def bucket_of(length) -> str:
  length = int(length or 0)
  return '0-4k' if length < 4000 else ('4-8k' if length < 8000 else '8k+')


def _buckets(mine: list[dict]) -> dict:
  return {b: round(100 * results.mean(r['score'] for r in mine if bucket_of(r['length']) == b), 2)
          for b in ('0-4k', '4-8k', '8k+')}


def summarise(rows: list[dict], datasets: list[str], longbench_e: bool) -> dict:
  per = {}
  for d in datasets:
    mine = [r for r in rows if r['dataset'] == d]
    per[d] = {'score': round(100 * results.mean(r['score'] for r in mine), 2), 'n': len(mine)}
    if longbench_e:
      per[d]['buckets'] = _buckets(mine)
  groups = {g: results.mean(per[d]['score'] for d in members if d in per)
            for g, members in GROUPS.items() if any(d in per for d in members)}
  total = sum(v['n'] for v in per.values())
  return {'datasets': per, 'groups': groups,
          'avg': results.mean(v['score'] for v in per.values()),
          'weighted_avg': sum(v['score'] * v['n'] for v in per.values()) / max(total, 1)}


# ---------------------------------------------------------------------------------------------
# The papers' protocol


def oc_entry(dataset: str, sample: dict) -> list[tuple[str, str]]:
  """The fields OpenCompass' loader keeps, in its order, then the output column (as '')."""
  fields = ('context',) if dataset in OC_CONTEXT_ONLY else ('input', 'context')
  output = 'all_labels' if dataset in OC_LABELS else 'answers'
  return [(k, str(sample[k])) for k in fields] + [(output, '')]


def oc_prompt(dataset: str, sample: dict, template: str) -> str:
  """The prompt OpenCompass builds: each '{field}' replaced in the loader's field order (its
  safe_format), so placeholders inside a field are filled by the fields replaced after it."""
  for key, value in oc_entry(dataset, sample):
    template = template.replace('{' + key + '}', value)
  return template


def drop_middle(ids, max_length: int) -> list[int]:
  """The wrapper's drop_middle on token ids: ids[:m // 2] + ids[-m // 2:] when there are more
  than m. Python reads -m // 2 as (-m) // 2, so an odd m keeps its extra token at the end and
  exactly m tokens remain."""
  ids = list(ids)
  if len(ids) <= max_length:
    return ids
  return ids[:max_length // 2] + ids[-max_length // 2:]


def oc_postprocess(dataset: str, prediction: str) -> str:
  """trec_postprocess, triviaqa_postprocess, samsum_postprocess, lsht_postprocess: the first line
  after leading newlines; the other datasets score the output as it is."""
  if dataset in FIRST_LINE:
    prediction = prediction.lstrip('\n').split('\n')[0]
  return prediction


def oc_score(dataset: str, prediction: str, sample: dict, code_sim: str = 'levenshtein') -> float:
  """What the dataset's OpenCompass evaluator adds for this sample (sum / n x 100 is the score)."""
  pred, answers = oc_postprocess(dataset, prediction), sample['answers']
  metric = METRIC[dataset]
  language = 'zh' if metric.endswith('_zh') else 'en'
  if metric.startswith('qa_f1'):
    return metrics.oc_f1_score(pred, answers, language)
  if metric.startswith('rouge'):
    return metrics.oc_rouge_score(pred, answers, language)
  if metric == 'classification':
    return metrics.oc_classification_score(pred, answers, sample['all_classes'])
  if metric.startswith('retrieval'):
    return metrics.oc_retrieval_score(pred, answers, language)
  if metric == 'count':
    return metrics.oc_count_score(pred, answers)
  return metrics.oc_code_sim_score(pred, answers, code_sim)


def oc_terms(dataset: str, prediction: str, sample: dict,
             code_sim: str = 'levenshtein') -> list[float]:
  """What the dataset's evaluator adds to its running total for this sample, in its order: one
  term per reference for count, retrieval and classification, else one (the best)."""
  if METRIC[dataset] not in OC_PER_REFERENCE:
    return [oc_score(dataset, prediction, sample, code_sim)]
  return [oc_score(dataset, prediction, dict(sample, answers=[r]), code_sim)
          for r in sample['answers']]


def _mean_if_complete(values: dict, members) -> float | None:
  return results.mean(values[m] for m in members) if all(m in values for m in members) else None


def summarise_papers(rows: list[dict], datasets: list[str], longbench_e: bool,
                     protocol: str) -> dict:
  """Dataset scores as OpenCompass' evaluators total them (sum / n x 100); category means and
  OpenCompass' en / zh groups only when all their datasets ran (as its summarizer)."""
  per = {}
  for d in datasets:
    mine = [r for r in rows if r['dataset'] == d]
    total = 0.0
    for r in mine:
      for term in r['terms']:
        total += term  # term by term, as the evaluator adds: the same float to the last bit
    per[d] = {'score': total / len(mine) * 100, 'n': len(mine)}
    if longbench_e:
      per[d]['buckets'] = _buckets(mine)
  scores = {d: v['score'] for d, v in per.items()}
  groups = {g: _mean_if_complete(scores, members) for g, members in GROUPS.items()}
  groups = {g: v for g, v in groups.items() if v is not None}
  n = sum(v['n'] for v in per.values())
  averages = {
      'categories': _mean_if_complete(groups, GROUPS),
      'datasets': results.mean(scores.values()),
      'questions': sum(v['score'] * v['n'] for v in per.values()) / n,
      'en': _mean_if_complete(scores, EN),
      'zh': _mean_if_complete(scores, ZH),
  }
  return {'datasets': per, 'groups': groups,
          'table': {LABELS[g]: v for g, v in groups.items()},
          'averages': averages, 'paper_avg': averages[PAPER_AVERAGE[protocol]],
          'avg': averages['datasets'], 'weighted_avg': averages['questions']}


# ---------------------------------------------------------------------------------------------
# The job


@dataclasses.dataclass
class Inputs:
  """What a run reads before the model loads: the datasets with files, their prompt templates,
  output budgets and records, and those asked for that have no file."""
  datasets: list[str]
  templates: dict[str, str]
  budgets: dict[str, int]
  samples: dict[str, list[dict]]
  missing: list[str]


def read_inputs(cfg: LongBenchConfig) -> Inputs:
  files = dataset_files(cfg)
  templates = dict(OC_PROMPTS if cfg.papers else PROMPTS,
                   **(_json_file(cfg.prompts, 'config.longbench.prompts') if cfg.prompts else {}))
  budgets = dict(OC_MAX_OUT_LEN if cfg.papers else MAX_NEW_TOKENS,
                 **(_json_file(cfg.max_new_tokens, 'config.longbench.max_new_tokens')
                    if cfg.max_new_tokens else {}))
  check_packages(cfg, files)
  samples = {d: read_samples(p, cfg.limit, d, required_keys(d, templates[d]))
             for d, p in files.items()}
  return Inputs(list(files), templates, budgets, samples,
                [d for d in (cfg.datasets or METRIC) if d not in files])


def papers_compute(cfg: LongBenchConfig, inputs: Inputs, generator, tok, generation, decode,
                   gold: dict | None) -> Callable:
  """compute(dataset, chosen samples, seed) under the papers' protocols: OpenCompass' prompt,
  the wrapper's drop_middle on token ids, the evaluator's terms."""

  def compute(dataset, chosen, seed):
    texts = [with_chat_template(dataset, oc_prompt(dataset, s, inputs.templates[dataset]), cfg)
             for s in chosen]
    full = [model_calls.prompt_ids(generator, tok, generation, t) for t in texts]
    kept = [drop_middle(ids, cfg.prompt_length) for ids in full]
    if hasattr(generator, 'generate_ids'):
      preds = generator.generate_ids(kept, decode(dataset), seed=seed)
    else:  # an oracle or a text-only generator: the kept ids as text
      shown = [tok.decode(ids) for ids in kept]
      if gold is not None:
        gold.update({t: (s['answers'] or [''])[0] for t, s in zip(shown, chosen)})
      preds = generator.generate(shown, decode(dataset), seed=seed)
    out = []
    for p, s, f, k in zip(preds, chosen, full, kept):
      terms = oc_terms(dataset, p, s, cfg.code_sim)
      out.append(dict(prediction=p, score=sum(terms), terms=terms, prompt_tokens=len(f),
                      kept_tokens=len(k)))
    return out

  return compute


def lladax_compute(cfg: LongBenchConfig, inputs: Inputs, generator, tok, decode,
                   gold: dict | None) -> Callable:
  """compute(dataset, chosen samples, seed) under lladax's reading of THUDM/LongBench."""

  def compute(dataset, chosen, seed):
    prompts = [build_prompt(dataset, s, inputs.templates[dataset], tok, cfg) for s in chosen]
    if gold is not None:
      gold.update({p: (s['answers'] or [''])[0] for p, s in zip(prompts, chosen)})
    preds = generator.generate(prompts, decode(dataset), seed=seed)
    return [dict(prediction=p, score=score(dataset, p, s, cfg.code_sim)) for p, s in
            zip(preds, chosen)]

  return compute


def run(config, generator: model_calls.Generator | None = None) -> dict:
  """The eval_longbench job; `generator` replaces the model (tests). With config.eval.oracle
  every prompt is answered with its first gold answer, which scores 100 on every metric where
  the metric gives its own reference full marks."""
  recipe = parse(config)
  cfg = recipe.longbench
  ecfg = recipe.eval
  paths = results.output_paths(recipe, ecfg, 'longbench')
  inputs = read_inputs(cfg)
  gold: dict[str, str] | None = {} if ecfg.oracle else None  # prompt -> first answer
  generator, tok, info = loading.setup(recipe, ecfg, generator, lambda: oracles.lookup(gold),
                                      protocol=cfg.protocol)
  generation = eval_settings.generation_of(info)
  info = eval_settings.note_deviations(info, deviations(cfg, recipe.sample), 'LongBench')

  def decode(dataset):
    return eval_settings.sampler_settings(recipe.sample, generation, **eval_settings.decode_settings(
        inputs.budgets[dataset], cfg.block_length, cfg.steps, 'config.longbench'))

  # What every dataset shares, whichever ran: a run extended by datasets or by `limit` keeps
  # its header and its finished cells.
  settings = dict(info, data_dir=os.path.abspath(cfg.data_dir), max_length=cfg.prompt_length,
                  chat_template=cfg.chat_template, longbench_e=cfg.longbench_e,
                  code_sim=cfg.code_sim, prompts=cfg.prompts or 'built-in',
                  max_new_tokens=cfg.max_new_tokens or 'built-in',
                  sampler={d: sampler.settings(decode(d)) for d in METRIC})
  store = results.ResultStore(paths['cells'], settings, ecfg.resume)
  cells = [dict(dataset=d, index=i) for d in inputs.datasets
           for i in range(len(inputs.samples[d]))]
  compute_for = (papers_compute(cfg, inputs, generator, tok, generation, decode, gold)
                 if cfg.papers else lladax_compute(cfg, inputs, generator, tok, decode, gold))

  def compute(batch):
    dataset = batch[0]['dataset']
    chosen = [inputs.samples[dataset][c['index']] for c in batch]
    out = compute_for(dataset, chosen, batch[0]['index'])
    return [dict(r, length=s.get('length'), id=s.get('_id')) for r, s in zip(out, chosen)]

  rows = results.run_cells(cells, store, compute, ecfg.batch_size, 'longbench',
                          group=lambda c: c['dataset'])
  summary = (summarise_papers(rows, inputs.datasets, cfg.longbench_e, cfg.protocol)
             if cfg.papers else summarise(rows, inputs.datasets, cfg.longbench_e))
  result = dict(job='eval_longbench', **settings, missing=inputs.missing, limit=cfg.limit,
                **summary, cells=rows)
  results.write_json(paths['json'], result)
  results.write_csv(paths['csv'], [dict(dataset=d, metric=METRIC[d], n=v['n'], score=v['score'])
                                  for d, v in summary['datasets'].items()])
  _print(cfg, summary)
  logging.info('LongBench results in %s', paths['json'])
  return result


def _print(cfg: LongBenchConfig, summary: dict) -> None:
  for d, v in summary['datasets'].items():
    print(f'LongBench {d:22s} {METRIC[d]:14s} {v["score"]:6.2f}  (n={v["n"]})')
  if cfg.papers:
    shown = {k: v for k, v in summary['averages'].items() if v is not None}
    print('LongBench ' + '  '.join(f'{k} {v:.2f}' for k, v in summary['table'].items())
          + '  |  averages: ' + '  '.join(f'{k} {v:.2f}' for k, v in shown.items()))
    return
  print(f'LongBench avg {summary["avg"]:.2f}  weighted {summary["weighted_avg"]:.2f}  groups '
        + '  '.join(f'{g}: {s:.2f}' for g, s in summary['groups'].items()))
