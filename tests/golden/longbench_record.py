"""Records LongBench as the papers ran it (OpenCompass 0.4.2 with the LLaDACausalLM wrapper) on
the inputs of longbench_inputs.py; see record.py for how to run it.

The official pieces run here:
- the 21 dataset configs (configs/datasets/longbench/*/longbench_*_gen_<hash>.py, the ones each
  `_gen.py` that LongLLaDA's and UltraLLaDA's eval_llada_long.py import points at): prompt
  template, max_out_len, output column, evaluator and postprocessor;
- the Hugging Face loading script OpenCompass' Longbench data folder ships (UltraLLaDA's copy,
  eval/data/Longbench/Longbench.py) on the generated jsonl files, then each dataset's loader
  (datasets/longbench/longbench_*.py), whose `load_dataset(path=..., name=..., data_dir=...)`
  is answered with that script's records;
- the prompt through PromptTemplate.generate_item and LMTemplateParser(None) (official.py);
- the evaluators (datasets/longbench/evaluators.py) with the real rouge, jieba and fuzzywuzzy,
  fuzzywuzzy once with python-Levenshtein's matcher and once with difflib's;
- LongLLaDA's llada/llada_wrapper.py `generate` with drop_middle, on a byte tokenizer that adds a
  BOS and a stand-in for LLaDA's generate(): the token ids it keeps, the generation length and
  steps it passes, and the text it returns.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import types
from unittest import mock

from golden import longbench_inputs as inputs
from golden.official import Official, prompt_builder

CONFIGS = 'opencompass/configs/datasets/longbench'
LOADERS = 'opencompass/datasets/longbench'
SCRIPT = 'eval/data/Longbench/Longbench.py'
WRAPPER = 'llada/llada_wrapper.py'


def _config_files(root: str) -> list[str]:
  """The dataset config each longbench_*_gen.py imports (relative to root)."""
  out = []
  for gen in sorted(glob.glob(f'{root}/{CONFIGS}/*/longbench_*_gen.py')):
    with open(gen, encoding='utf-8') as f:
      target = re.search(r'from \.(\S+) import', f.read()).group(1)
    out.append(os.path.relpath(os.path.join(os.path.dirname(gen), target + '.py'), root))
  return out


class _Split:
  """A Hugging Face split as the loaders use it: len() counts rows, split[column] is a list."""

  def __init__(self, rows: list[dict]):
    self.rows = rows

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, column: str) -> list:
    return [row[column] for row in self.rows]


def _hf_loader(script_module, data_dir: str):
  """`load_dataset(path, name, data_dir)` answered as Hugging Face would with the script: its
  _generate_examples on data_dir/data/<name>.jsonl, as columns of the 'test' split."""

  def load_dataset(path=None, name=None, data_dir=None, **_):
    del path
    builder = script_module.LongBench()
    builder.config = types.SimpleNamespace(name=name, data_dir=data_dir)
    rows = [row for _, row in builder._generate_examples(  # pylint: disable=protected-access
        os.path.join(data_dir, 'data', f'{name}.jsonl'))]
    return {'test': _Split(rows)}

  del data_dir
  return load_dataset


def _datasets(oc: Official, root: str, script, data_dir: str):
  """(the evaluators module, name -> {config, rows (loader output), template, ...})."""
  evaluators = oc.load(f'{LOADERS}/evaluators.py', 'opencompass.datasets.longbench.evaluators')
  out = {}
  for i, path in enumerate(_config_files(root)):
    cfg_module = oc.load(path, f'longbench_config_{i}')
    (ds,) = [v for k, v in vars(cfg_module).items() if k.endswith('_datasets')][0]
    loader_file = {
        '2wikimqa': 'longbench_2wikim_qa', 'hotpotqa': 'longbench_hotpot_qa',
        'narrativeqa': 'longbench_narrative_qa', 'triviaqa': 'longbench_trivia_qa',
        'repobench-p': 'longbench_repobench'}.get(ds['name'], f'longbench_{ds["name"]}')
    loader = oc.load(f'{LOADERS}/{loader_file}.py', f'opencompass.datasets.longbench.{loader_file}')
    loader.load_dataset = _hf_loader(script, data_dir)
    rows = getattr(loader, ds['type'].__name__).load(path=data_dir, name=ds['name'])['test']
    evaluator = ds['eval_cfg']['evaluator']
    post = ds['eval_cfg'].get('pred_postprocessor')
    out[ds['name']] = dict(
        config=path, rows=rows, template=ds['infer_cfg']['prompt_template']['template'],
        output_column=ds['reader_cfg']['output_column'],
        max_out_len=ds['infer_cfg']['inferencer']['max_out_len'],
        evaluator=getattr(evaluators, evaluator['type'].__name__)(
            **{k: v for k, v in evaluator.items() if k != 'type'}),
        evaluator_name=evaluator['type'].__name__, language=evaluator.get('language', 'en'),
        postprocess=getattr(loader, post['type'].__name__) if post else None)
  return evaluators, out


def _with_matcher(backend: str):
  """fuzzywuzzy's fuzz module with the SequenceMatcher that backend stands for."""
  from fuzzywuzzy import fuzz  # pylint: disable=import-outside-toplevel
  if backend == 'difflib':
    import difflib  # pylint: disable=import-outside-toplevel
    return mock.patch.object(fuzz, 'SequenceMatcher', difflib.SequenceMatcher)
  try:
    from fuzzywuzzy.StringMatcher import StringMatcher  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit('recording LongBench needs python-Levenshtein (pip install '
                     'python-Levenshtein): fuzzywuzzy uses it when installed, as OpenCompass\' '
                     f'requirements do ({e}).') from None
  return mock.patch.object(fuzz, 'SequenceMatcher', StringMatcher)


def _score(evaluator, predictions, references) -> float:
  return float(evaluator.score(list(predictions), list(references))['score'])


class _HFBytes:
  """The wrapper's tokenizer: __call__ as Hugging Face's (add_special_tokens on by default)."""
  pad_token_id = 256

  def __init__(self):
    self.tok = inputs.BosBytes()

  def __call__(self, texts, padding=False, truncation=False, add_special_tokens=True):
    del padding, truncation
    return {'input_ids': [self.tok.encode(t, add_special_tokens) for t in texts]}

  def batch_decode(self, rows, skip_special_tokens=False):
    assert skip_special_tokens
    return [self.tok.decode([int(i) for i in row]) for row in rows]


def _wrapper(oc_llada: Official):
  """A LLaDACausalLM without a model: generate() runs as written up to LLaDA's generate(), which
  a stand-in answers with inputs.GENERATED after recording what it was given."""
  import torch  # pylint: disable=import-outside-toplevel
  module = oc_llada.load(WRAPPER, 'opencompass.models.llada.llada_wrapper')
  calls = []

  def generate(model, prompt, gen_length, **config):
    del model
    calls.append(dict(ids=[int(i) for i in prompt[0]], gen_length=gen_length,
                      steps=config['steps'], block_length=config['block_length']))
    out = torch.tensor([inputs.GENERATED + [256] * (gen_length - len(inputs.GENERATED))])
    return torch.cat([prompt, out], dim=-1)

  module.generate = generate

  def fresh(max_seq_len):
    model = module.LLaDACausalLM.__new__(module.LLaDACausalLM)
    model.tokenizer, model.max_seq_len, model.drop_middle = _HFBytes(), max_seq_len, True
    model.model = types.SimpleNamespace(device='cpu')
    model.model_type, model.generation_kwargs, model.stop_words = 'llada', {}, []
    # The defaults of the wrapper's __init__, updated with the papers' diffusion_config.
    model.diffusion_config = {'steps': 128, 'block_length': 32, 'temperature': 0.,
                              'cfg_scale': 0., 'remasking': 'low_confidence'}
    model.diffusion_config.update({'steps': 512, 'block_length': 64})
    return model

  return fresh, calls


def record(sources: dict, work: str) -> dict:
  oc_root = sources['opencompass']['path']
  inputs.write(work, layout='hf')
  with contextlib.redirect_stdout(io.StringIO()):  # the wrapper prints shapes and settings
    return _record(sources, work, oc_root)


def _same_file(a: str, b: str) -> bool:
  with open(a, 'rb') as fa, open(b, 'rb') as fb:
    return fa.read() == fb.read()


def _record(sources: dict, work: str, oc_root: str) -> dict:
  ultra_wrapper = ('eval/opencompass-0.4.2/opencompass/opencompass/models/llada/'
                   'llada_wrapper.py')
  payload = {'hf_script': f'ultrallada:{SCRIPT}', 'wrapper': f'longllada:{WRAPPER}',
             # UltraLLaDA's copy of the wrapper is the same file, so one recording serves both.
             'wrappers_identical': _same_file(f'{sources["longllada"]["path"]}/{WRAPPER}',
                                              f'{sources["ultrallada"]["path"]}/{ultra_wrapper}'),
             'datasets': {}, 'metric_cases': {}, 'truncation': [], 'wrapper_calls': []}
  with Official(oc_root) as oc:
    build = prompt_builder(oc)
    script = Official(sources['ultrallada']['path']).load(SCRIPT, 'longbench_hf_script')
    evaluators, datasets = _datasets(oc, oc_root, script, work)
    fresh, calls = _wrapper(Official(sources['longllada']['path']))
    for name, d in datasets.items():
      prompts = [build(d['template'], row, d['output_column']) for row in d['rows']]
      refs = [row[d['output_column']] for row in d['rows']]
      cases, case_refs = [], []
      for row, ref in zip(inputs.records()[name], refs):
        for pred in inputs.predictions(name, row['answers']):
          post = d['postprocess'](pred) if d['postprocess'] else pred
          with _with_matcher('levenshtein'):
            cases.append(dict(prediction=pred, postprocessed=post,
                              score=_score(d['evaluator'], [post], [ref])))
          case_refs.append(ref)
      with _with_matcher('levenshtein'):
        total = _score(d['evaluator'], [c['postprocessed'] for c in cases], case_refs)
      # The whole chain on the first prompt: drop_middle to 64 ids (where it is longer), the
      # generation length and steps the dataset's max_out_len gives, the decoded text.
      text = fresh(64).generate([prompts[0]], d['max_out_len'])
      payload['datasets'][name] = dict(
          config=d['config'], loader_rows=d['rows'], prompts=prompts,
          max_out_len=d['max_out_len'], output_column=d['output_column'],
          evaluator=d['evaluator_name'], language=d['language'],
          postprocessor=d['postprocess'].__name__ if d['postprocess'] else None,
          cases=cases, score=total, wrapper=dict(calls[-1], text=text[0]))
    # The wrapper's truncation on chosen lengths.
    for prompt, max_seq_len in inputs.TRUNCATION_CASES:
      fresh(max_seq_len).generate([prompt], 32)
      payload['truncation'].append(dict(prompt=prompt, max_seq_len=max_seq_len,
                                        ids=calls[-1]['ids']))
    # One instance across datasets: the wrapper caps steps in its shared dict (lladax does not).
    shared = fresh(64)
    for max_out_len in (32, 512):
      shared.generate(['abc'], max_out_len)
      payload['wrapper_calls'].append(dict(max_out_len=max_out_len, **{
          k: calls[-1][k] for k in ('gen_length', 'steps')}))
    # Each evaluator on the edge cases, fuzzywuzzy with either matcher for code similarity.
    kinds = {'f1_en': ('LongBenchF1Evaluator', {}), 'f1_zh': ('LongBenchF1Evaluator',
                                                             {'language': 'zh'}),
             'rouge_en': ('LongBenchRougeEvaluator', {}),
             'rouge_zh': ('LongBenchRougeEvaluator', {'language': 'zh'}),
             'classification': ('LongBenchClassificationEvaluator', {}),
             'retrieval_en': ('LongBenchRetrievalEvaluator', {}),
             'retrieval_zh': ('LongBenchRetrievalEvaluator', {'language': 'zh'}),
             'count': ('LongBenchCountEvaluator', {}),
             'code_sim': ('LongBenchCodeSimEvaluator', {})}
    for kind, cases in inputs.METRIC_CASES.items():
      cls, kwargs = kinds[kind]
      evaluator = getattr(evaluators, cls)(**kwargs)
      out = []
      for case in cases:
        pred, answers = case[0], case[1]
        ref = {'answers': answers, 'all_classes': case[2]} if kind == 'classification' else answers
        scores = {}
        for backend in (('levenshtein', 'difflib') if kind == 'code_sim' else ('levenshtein',)):
          with _with_matcher(backend):
            scores[backend] = _score(evaluator, [pred], [ref])
        classes = case[2] if len(case) > 2 else None
        out.append(dict(prediction=pred, references=answers, all_classes=classes,
                        score=scores['levenshtein'],
                        **({'score_difflib': scores['difflib']} if kind == 'code_sim' else {})))
      payload['metric_cases'][kind] = out
  return payload
