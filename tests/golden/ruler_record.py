"""Records OpenCompass 0.4.2's RULER on ruler_inputs' files: every task's prompts and answers at a
few small lengths, the prompt each paper's template hands the model, and the evaluators' scores.

The official dataset builders run twice: from stock OpenCompass 0.4.2 (LongLLaDA's, tokenizer
'gpt-4') and from UltraLLaDA's patched copy (tokenizer 'cl100k_base'); both count in the test BPE
of bpe.py, patched in for cl100k. Their parameters come from the official dataset configs
(ruler_{niah,vt,cwe,fwe,qa}_gen.py) with num_samples, max_seq_length and tokenizer_model set as
ruler_<k>k_gen.py sets them. Words come from the installed wonderwords package, whose version and
list digests are recorded (the tests need the same lists). Prompts are stored as sha256 + length
with their head and tail (in full for the first sample at the smallest length).
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import math
import os
import re
import sys

from golden import bpe, official, ruler_inputs

STOCK_ROOT = ''                                              # opencompass itself
ULTRA_ROOT = 'eval/opencompass-0.4.2/opencompass'            # inside UltraLLaDA
TEMPLATE_PROBE = 'Keep {answer}, {prompt} and {query} {answer}.'
KINDS = ('niah', 'vt', 'cwe', 'fwe', 'qa')
LOADERS = {'niah': 'RulerNiahDataset', 'vt': 'RulerVtDataset', 'cwe': 'RulerCweDataset',
           'fwe': 'RulerFweDataset', 'qa': 'RulerQaDataset'}
EVALUATORS = {'niah': 'RulerNiahEvaluator', 'vt': 'RulerVtEvaluator',
              'cwe': 'RulerCweEvaluator', 'fwe': 'RulerFweEvaluator', 'qa': 'RulerQaEvaluator'}
# (abbr of the official config, lengths): 1024 and 2048 take the official short-length branches
# (< 4096), 4096 the others, for the tasks where that differs and stays cheap.
LENGTHS = (1024, 2048)
LONG = (4096,)
LONG_TASKS = ('ruler_niah_single_1', 'ruler_niah_single_2', 'ruler_niah_multikey_2', 'ruler_vt',
              'ruler_cwe', 'ruler_fwe')
SAMPLES = 3


def sha(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def digest(text: str, full: bool) -> dict:
  out = {'sha256': sha(text), 'chars': len(text), 'head': text[:160], 'tail': text[-240:]}
  if full:
    out['text'] = text
  return out


def dataset_configs(oc, root_label: str) -> list[dict]:
  """The dataset dicts of the five official RULER configs, in their order."""
  out = []
  for kind in KINDS:
    mod = oc.load(f'opencompass/configs/datasets/ruler/ruler_{kind}_gen.py',
                  f'golden_ruler_cfg_{root_label}_{kind}')
    out += [dict(d, kind=kind) for d in getattr(mod, f'{kind}_datasets')]
  return out


def grid_file_facts(path: str) -> dict:
  """What a ruler_<k>k_gen.py sets: the length(s), samples and tokenizer name."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  code = '\n'.join(l for l in text.split('\n') if not l.lstrip().startswith('#'))
  listed = re.findall(r'max_seq_lens = \[(.*?)\]', code)[0].split(',')
  lengths = [math.prod(int(f) for f in x.split('*')) for x in listed]  # '1024 * 4'
  samples = int(re.findall(r'NUM_SAMPLES = (\d+)', code)[0])
  tokenizer = re.findall(r"tokenizer_model = (?:os\.environ\.get\('TOKENIZER_MODEL', )?'([^']+)'",
                         code)[0]
  return {'lengths': lengths, 'num_samples': samples, 'tokenizer_model': tokenizer}


def eval_file_facts(path: str) -> dict:
  """The RULER grids a paper's eval script imports and its LLaDA-8B-Base model settings."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  code = '\n'.join(l for l in text.split('\n') if not l.lstrip().startswith('#'))
  grids = re.findall(r'ruler\.ruler_(\w+)_gen import', code)
  model = ast.literal_eval(re.findall(r"\('llada_8b_base-o64_b64_s64',.*?\)\s*,?\s*\n", code)[0]
                           .strip().rstrip(','))
  return {'grids': grids, 'model': {'abbr': model[0], 'diffusion_config': model[2],
                                    'max_out_len': model[3]}}


def run_loader(oc, cfg: dict, length: int, tokenizer_model: str,
               files: dict) -> tuple[list[str], list]:
  module = oc.load(f'opencompass/datasets/ruler/ruler_{cfg["kind"]}.py',
                   f'opencompass.datasets.ruler.ruler_{cfg["kind"]}')
  params = {k: v for k, v in cfg.items()
            if k not in ('abbr', 'type', 'reader_cfg', 'infer_cfg', 'eval_cfg', 'kind')}
  params.update(max_seq_length=length, num_samples=SAMPLES, tokenizer_model=tokenizer_model)
  if cfg['kind'] == 'niah':
    params.update(base_path=os.path.dirname(files['essay']),
                  file_path=os.path.basename(files['essay']))
  if cfg['kind'] == 'qa':
    params['path'] = files[cfg['dataset']]
  with contextlib.redirect_stdout(io.StringIO()):
    data = getattr(module, LOADERS[cfg['kind']]).load(**params)
  return list(data['prompt']), [list(a) for a in data['answer']]


def record_source(root: str, label: str, tokenizer_model: str, encoding, files: dict) -> dict:
  out = {}
  with official.Official(root, encoding) as oc:
    build = official.prompt_builder(oc)
    for cfg in dataset_configs(oc, label):
      abbr = cfg['abbr']
      lengths = LENGTHS + (LONG if abbr in LONG_TASKS else ())
      cases = [(str(l), l) for l in lengths]
      task = {'tokens_to_generate': cfg.get('tokens_to_generate'),
              'inferencer': sorted(k for k in cfg['infer_cfg']['inferencer'] if k != 'type'),
              'cases': {}}
      template = cfg['infer_cfg']['prompt_template']['template']
      answer_less = dict(template, round=[r for r in template['round'] if r['role'] != 'BOT'])
      for name, length in cases:
        prompts, answers = run_loader(oc, cfg, length, tokenizer_model, files)
        first = name == str(LENGTHS[0])
        case = {'length': length,
                'prompts': [digest(p, first and i == 0) for i, p in enumerate(prompts)],
                'answers': answers}
        if first:
          # What the model receives: the template with the answer (BOT) turn, as shipped and as
          # UltraLLaDA ran it, and without it, as LongLLaDA ran it.
          entry = {'prompt': prompts[0], 'answer': answers[0]}
          for turn, tmpl in (('present', template), ('absent', answer_less)):
            text = build(tmpl, entry, 'answer')
            assert text.startswith(prompts[0]), (abbr, turn)
            case[f'turn_{turn}_suffix'] = text[len(prompts[0]):]
            # A dataset prompt quoting the template's field names (an essay or a SQuAD paragraph
            # could): what the template's formatting does to them.
            probe = {'prompt': TEMPLATE_PROBE, 'answer': answers[0]}
            case[f'turn_{turn}_probe'] = build(tmpl, probe, 'answer')
        if 'evaluator' not in task and all(answers):
          # The evaluators divide by the number of answers: score where every sample has some.
          preds, golds = [], []
          for a in answers:
            preds += ruler_inputs.predictions(a)
            golds += [a] * len(ruler_inputs.predictions(a))
          evaluator = getattr(sys.modules[f'opencompass.datasets.ruler.ruler_{cfg["kind"]}'],
                              EVALUATORS[cfg['kind']])()
          task['evaluator'] = {'case': name, 'predictions': preds,
                               'score': evaluator.score(preds, golds)}
        task['cases'][name] = case
      out[abbr] = task
  return out


def word_lists() -> dict:
  import wonderwords  # pylint: disable=import-outside-toplevel
  from wonderwords import random_word  # pylint: disable=import-outside-toplevel
  read = random_word._get_words_from_text_file  # pylint: disable=protected-access
  return {'version': wonderwords.__version__,
          'sha256': {name: sha('\n'.join(read(name))) for name in
                     ('nounlist.txt', 'adjectivelist.txt', 'verblist.txt')}}


def record(sources: dict, work: str) -> dict:
  files = ruler_inputs.write_all(work)
  encoding = bpe.encoding(files['bpe'])
  stock = sources['opencompass']['path']
  ultra = os.path.join(sources['ultrallada']['path'], ULTRA_ROOT)
  grid = {}
  for label, root in (('longllada', stock), ('ultrallada', ultra)):
    folder = os.path.join(root, 'opencompass/configs/datasets/ruler')
    grid[label] = {k: grid_file_facts(os.path.join(folder, f'ruler_{k}_gen.py'))
                   for k in ('4k', '8k', '16k', '32k')}
  ultra_evals = os.path.join(ultra, 'eval/ruler')
  runs = {'longllada': [eval_file_facts(os.path.join(sources['longllada']['path'],
                                                     'eval/eval_llada_ruler.py'))],
          'ultrallada': [eval_file_facts(os.path.join(ultra_evals, d, 'eval_llada_ruler.py'))
                         for d in sorted(os.listdir(ultra_evals))]}
  tokenizers = {label: grid[label]['4k']['tokenizer_model'] for label in grid}
  recorded = {'longllada': record_source(stock, 'stock', tokenizers['longllada'], encoding,
                                         files),
              'ultrallada': record_source(ultra, 'ultra', tokenizers['ultrallada'], encoding,
                                          files)}
  # The patched copy differs only in how it names the tokenizer: the prompts must agree.
  for abbr, task in recorded['ultrallada'].items():
    for name, case in task['cases'].items():
      stock_case = recorded['longllada'][abbr]['cases'][name]
      assert [p['sha256'] for p in case['prompts']] == [
          p['sha256'] for p in stock_case['prompts']], (abbr, name)
  return {'python': sys.version.split()[0], 'wonderwords': word_lists(), 'grid_files': grid,
          'eval_scripts': runs, 'samples': SAMPLES,
          'tasks': recorded['longllada'],
          'ultrallada_same_prompts': True}
