"""LongBench (v1, and LongBench-E) over a local folder of its JSON-lines files.

Each dataset's official prompt and output length (config/dataset2prompt.json and
dataset2maxlen.json of THUDM/LongBench, reproduced below; a local copy of either file overrides
them), middle truncation of prompts longer than `max_length` tokens (the first and last
max_length/2 tokens are kept, decoded back to text), optional chat template except for the
few-shot and code sets, and the official metrics: the best score over a sample's gold answers,
averaged, x 100. The first line only counts for trec, triviaqa, samsum and lsht. Groups: single-doc
QA, multi-doc QA, summarisation, few-shot, synthetic, code; 'avg' is the mean over datasets and
'weighted_avg' the question-weighted mean UltraLLaDA reports. Outputs: longbench_results.json,
longbench_results.csv and longbench_cells.jsonl (finished samples, for resuming).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from lladax.config import ConfigError, from_section
from lladax.data import tokenizers
from lladax.evals import metrics, oracles, runner

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
# No chat template for these (LongBench pred.py), and only the first output line is scored.
NO_CHAT = ('trec', 'triviaqa', 'samsum', 'lsht', 'lcc', 'repobench-p')
FIRST_LINE = ('trec', 'triviaqa', 'samsum', 'lsht')
# samsum also stops at a newline (LongBench adds "\n" to the EOS ids).
STOP = {'samsum': ('\n',)}


@dataclasses.dataclass(frozen=True)
class LongBenchConfig:
  """`config.longbench`."""
  data_dir: str = ''              # folder of LongBench's <dataset>.jsonl files (its data.zip)
  datasets: tuple[str, ...] = ()  # () = every LongBench dataset with a file in data_dir
  longbench_e: bool = False       # read <dataset>_e.jsonl and also score by length bucket
                                  # (0-4k, 4-8k, 8k+)
  max_length: int = 3500          # prompt tokens kept, first and last halves (LongLLaDA 3500 /
                                  # 7500, UltraLLaDA 16000)
  block_length: int = 64
  steps: int = 512                # capped at each dataset's (rounded) output length
  chat_template: bool = False     # LLaDA-Instruct's template, except for the few-shot and code
                                  # sets; False for base models
  prompts: str = ''               # a dataset2prompt.json to use instead of the built-in copy
  max_new_tokens: str = ''        # a dataset2maxlen.json to use instead of the built-in copy
  limit: int = 0                  # first N samples per dataset (0 = all)

  def __post_init__(self):
    unknown = [d for d in self.datasets if d not in METRIC]
    if unknown:
      raise ConfigError(f'config.longbench.datasets has {unknown[0]!r}, not a LongBench dataset; '
                        f'choose from {", ".join(METRIC)}.')
    if self.max_length < 2:
      raise ConfigError('config.longbench.max_length must be at least 2 tokens.')


def _json_file(path: str, where: str) -> dict:
  if not os.path.exists(path):
    raise ConfigError(f'{where}={path!r} does not exist; give the LongBench config file or "".')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def dataset_files(cfg: LongBenchConfig) -> dict[str, str]:
  """Dataset name -> its local .jsonl file."""
  if not cfg.data_dir or not os.path.isdir(cfg.data_dir):
    raise ConfigError(f'config.longbench.data_dir={cfg.data_dir!r} is not a folder; unpack '
                      "LongBench's data.zip and point it at the folder of .jsonl files.")
  suffix = '_e' if cfg.longbench_e else ''
  names = cfg.datasets or tuple(METRIC)
  files = {d: os.path.join(cfg.data_dir, f'{d}{suffix}.jsonl') for d in names}
  missing = [d for d, p in files.items() if not os.path.exists(p)]
  if cfg.datasets and missing:
    raise ConfigError(f'{files[missing[0]]} does not exist; put the file there or drop '
                      f'{missing[0]!r} from config.longbench.datasets.')
  files = {d: p for d, p in files.items() if d not in missing}
  if not files:
    raise ConfigError(f'{cfg.data_dir} holds no LongBench file (<dataset>{suffix}.jsonl).')
  return files


def read_samples(path: str, limit: int) -> list[dict]:
  out = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        out.append(json.loads(line))
        if limit and len(out) >= limit:
          break
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
  prompt = truncate_middle(prompt, tok, cfg.max_length)
  if cfg.chat_template and dataset not in NO_CHAT:
    # The BOS the generator adds stands for the template's; the rest is the template's text.
    prompt = tokenizers.chat_template([{'role': 'user', 'content': prompt}], bos_token='')
  return prompt


def postprocess(dataset: str, prediction: str) -> str:
  for stop in STOP.get(dataset, ()):
    prediction = prediction.split(stop, 1)[0]
  if dataset in FIRST_LINE:
    prediction = prediction.lstrip('\n').split('\n')[0]
  return prediction


def score(dataset: str, prediction: str, sample: dict) -> float:
  return metrics.best_over_answers(METRIC[dataset], postprocess(dataset, prediction),
                                   sample['answers'], all_classes=sample.get('all_classes') or ())


def bucket_of(length) -> str:
  length = int(length or 0)
  return '0-4k' if length < 4000 else ('4-8k' if length < 8000 else '8k+')


def summarise(rows: list[dict], datasets: list[str], longbench_e: bool) -> dict:
  per = {}
  for d in datasets:
    mine = [r for r in rows if r['dataset'] == d]
    per[d] = {'score': round(100 * runner.mean(r['score'] for r in mine), 2), 'n': len(mine)}
    if longbench_e:
      per[d]['buckets'] = {b: round(100 * runner.mean(r['score'] for r in mine
                                                        if bucket_of(r['length']) == b), 2)
                           for b in ('0-4k', '4-8k', '8k+')}
  groups = {g: runner.mean(per[d]['score'] for d in members if d in per)
            for g, members in GROUPS.items() if any(d in per for d in members)}
  total = sum(v['n'] for v in per.values())
  return {'datasets': per, 'groups': groups,
          'avg': runner.mean(v['score'] for v in per.values()),
          'weighted_avg': sum(v['score'] * v['n'] for v in per.values()) / max(total, 1)}


def run(config, generator: runner.Generator | None = None) -> dict:
  """The eval_longbench job; `generator` replaces the model (tests). With config.eval.oracle
  every prompt is answered with its first gold answer, which must score 100 on every metric."""
  cfg = from_section(LongBenchConfig, config.get('longbench'), 'config.longbench')
  ecfg = runner.eval_config(config)
  paths = runner.output_paths(config, ecfg, 'longbench')
  files = dataset_files(cfg)
  templates = dict(PROMPTS, **(_json_file(cfg.prompts, 'config.longbench.prompts')
                               if cfg.prompts else {}))
  budgets = dict(MAX_NEW_TOKENS, **(_json_file(cfg.max_new_tokens,
                                               'config.longbench.max_new_tokens')
                                    if cfg.max_new_tokens else {}))
  gold: dict[str, str] = {}
  generator, tok, info = runner.setup(config, ecfg, generator, lambda: oracles.lookup(gold))
  samples = {d: read_samples(p, cfg.limit) for d, p in files.items()}
  datasets = list(files)

  def decode(dataset):
    return runner.sampler_settings(config, **runner.decode_settings(
        budgets[dataset], cfg.block_length, cfg.steps, 'config.longbench'))

  settings = dict(info, data_dir=os.path.abspath(cfg.data_dir), max_length=cfg.max_length,
                  chat_template=cfg.chat_template, longbench_e=cfg.longbench_e,
                  prompts=cfg.prompts or 'built-in', max_new_tokens=cfg.max_new_tokens or 'built-in',
                  sampler={d: dataclasses.asdict(decode(d)) for d in datasets})
  store = runner.ResultStore(paths['cells'], settings, ecfg.resume)
  cells = [dict(dataset=d, index=i) for d in datasets for i in range(len(samples[d]))]

  def compute(batch):
    dataset = batch[0]['dataset']
    chosen = [samples[dataset][c['index']] for c in batch]
    prompts = [build_prompt(dataset, s, templates[dataset], tok, cfg) for s in chosen]
    if ecfg.oracle:
      gold.update({p: (s['answers'] or [''])[0] for p, s in zip(prompts, chosen)})
    preds = generator.generate(prompts, decode(dataset), seed=batch[0]['index'])
    return [dict(prediction=p, score=score(dataset, p, s), length=s.get('length'),
                 id=s.get('_id')) for p, s in zip(preds, chosen)]

  try:
    runner.run_cells(cells, store, compute, ecfg.batch_size, 'longbench',
                     group=lambda c: c['dataset'])
  finally:
    store.close()
  rows = [dict(c, **store.get(c)) for c in cells]
  summary = summarise(rows, datasets, cfg.longbench_e)
  result = dict(job='eval_longbench', **settings, **summary, cells=rows)
  runner.write_json(paths['json'], result)
  runner.write_csv(paths['csv'], [dict(dataset=d, metric=METRIC[d], n=v['n'], score=v['score'])
                                  for d, v in summary['datasets'].items()])
  for d, v in summary['datasets'].items():
    print(f'LongBench {d:22s} {METRIC[d]:14s} {v["score"]:6.2f}  (n={v["n"]})')
  print(f'LongBench avg {summary["avg"]:.2f}  weighted {summary["weighted_avg"]:.2f}  groups '
        + '  '.join(f'{g}: {s:.2f}' for g, s in summary['groups'].items()))
  logging.info('LongBench results in %s', paths['json'])
  return result
