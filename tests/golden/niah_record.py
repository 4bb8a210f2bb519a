"""Records the papers' NeedleBench "origin" on generated inputs: tests/golden/data/niah.json.

For each paper (LongLLaDA: its needlebench/ files over OpenCompass 0.4.2; UltraLLaDA: its patched
OpenCompass copy) this runs, from the fetched trees and with the test BPE of bpe.py standing in
for cl100k_base:

- the dataset config (needlebench_single.py): the grid and settings of its English datasets;
- the eval config's model entries (read as literals: steps, block_length, max_out_len);
- origin.py's NeedleBenchOriginDataset.load on niah_inputs' en_un_asr.jsonl / needles.jsonl for
  the cells of niah_inputs.GRIDS, and OpenCompass' prompt template + LMTemplateParser on each
  row: the exact string the model receives, and the answer column;
- origin.py's NeedleBenchOriginEvaluator on niah_inputs.PREDICTIONS;
- the summarizer's `visualize` (plots stubbed out) on a grid of cell scores: the per-length
  "Average Depth Score" and the Overall Score the papers' heatmaps show;
- the load on a haystack holding '<|endoftext|>': the error it raises.

Prompts of niah_inputs.FULL_TEXT_LENGTHS are stored whole, the others as sha256, size, the text
around the needle and the tail, to keep the file small.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import os
import sys
from unittest import mock

from golden import bpe, niah_inputs, official

MODEL = 'llada_8b_base'


def _paths(sources: dict) -> dict:
  longllada = sources['longllada']['path']
  ultra_oc = os.path.join(sources['ultrallada']['path'], 'eval', 'opencompass-0.4.2',
                          'opencompass')
  return {
      'longllada': dict(
          opencompass=sources['opencompass']['path'],
          origin=os.path.join(longllada, 'needlebench', 'origin.py'),
          dataset=os.path.join(longllada, 'needlebench', 'needlebench', 'needlebench_single.py'),
          summarizer=os.path.join(longllada, 'needlebench', 'needlebench_summarizer.py'),
          eval=os.path.join(longllada, 'eval', 'eval_llada_niah.py')),
      'ultrallada': dict(
          opencompass=ultra_oc,
          origin=os.path.join(ultra_oc, 'opencompass', 'datasets', 'needlebench', 'origin.py'),
          dataset=os.path.join(ultra_oc, 'opencompass', 'configs', 'datasets', 'needlebench',
                               'needlebench', 'needlebench_single.py'),
          summarizer=os.path.join(ultra_oc, 'opencompass', 'summarizers', 'needlebench.py'),
          eval=os.path.join(ultra_oc, 'eval', 'niah', '128k', 'eval_llada_niah.py')),
  }


def _sha(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _model_entries(path: str) -> list:
  """The (abbr, scaling_config, diffusion_config, max_out_len) tuples of the eval config's first
  `models = [...]` literal (the file itself needs mmengine's read_base to execute)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == 'models'
                                             for t in node.targets)
        and isinstance(node.value, ast.List)):
      return [list(entry) for entry in ast.literal_eval(node.value)]
  raise RuntimeError(f'{path} has no literal models list')


def _plain(value):
  """A config value without its classes (type=PromptTemplate, ...), for the JSON file."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items() if k != 'type'}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _settings(datasets: list) -> dict:
  """What the dataset config's English datasets run."""
  first = datasets[0]
  keys = ('tokenizer_model', 'file_list', 'num_repeats_per_file', 'length_buffer', 'guide',
          'language', 'needle_file_name')
  for d in datasets:
    assert all(d[k] == first[k] for k in keys), d['abbr']
  return dict({k: first[k] for k in keys},
              lengths=sorted({d['length'] for d in datasets}),
              depths=sorted({d['depth'] for d in datasets}), n_datasets=len(datasets),
              abbrs=[d['abbr'] for d in datasets[:2]],
              template=_plain(first['infer_cfg']['prompt_template']['template']),
              output_column=first['reader_cfg']['output_column'],
              use_trim=first['eval_cfg']['evaluator'].get('use_trim', False))


def _cell(prompt: str, answer: str, full: bool) -> dict:
  needle = answer.split('*')[0]
  at = prompt.find(needle)
  out = dict(answer=answer, sha256=_sha(prompt), chars=len(prompt), needle_at=at,
             around_needle=prompt[max(at - 6, 0):at + len(needle) + 6],
             tail=prompt[-400:])
  if full:
    out['prompt'] = prompt
  return out


def _load_kwargs(settings: dict, data_dir: str, length: int, depth: int, repeats: int) -> dict:
  return dict(path=data_dir, length=length, depth=depth,
              tokenizer_model=settings['tokenizer_model'], file_list=settings['file_list'],
              num_repeats_per_file=repeats, length_buffer=settings['length_buffer'],
              guide=settings['guide'], language=settings['language'],
              needle_file_name=settings['needle_file_name'])


def _summary(summarizer_path: str, oc, evaluator) -> dict:
  """The summarizer's Overall and per-length scores on niah_inputs' summary grid."""
  rel = os.path.relpath(summarizer_path, oc.root)
  # seaborn only draws; it is not installed here. (Not mock.patch.dict: that would also drop
  # pandas' modules imported meanwhile, leaving the summarizer with stale classes.)
  had_seaborn = sys.modules.get('seaborn')
  sys.modules['seaborn'] = mock.MagicMock()
  try:
    summ = oc.load(rel, 'opencompass.summarizers.needlebench')
  finally:
    if had_seaborn is None:
      del sys.modules['seaborn']
    else:
      sys.modules['seaborn'] = had_seaborn
  summ.plt, summ.sns = mock.MagicMock(), mock.MagicMock()
  scores, cells = {}, []
  for li, length in enumerate(niah_inputs.SUMMARY_LENGTHS):
    for di, depth in enumerate(niah_inputs.SUMMARY_DEPTHS):
      picked = [niah_inputs.summary_prediction(li, di, r)
                for r in range(niah_inputs.SUMMARY_REPEATS)]
      preds = [niah_inputs.PREDICTIONS[i] for i in picked]
      with contextlib.redirect_stdout(io.StringIO()):
        result = evaluator.score([p for p, _, _ in preds],
                                 [f'\n{n}\n*{k}' for _, n, k in preds])
      scores[f'Length{length}Depth{depth}_origin_en'] = {'score': result['score']}
      cells.append(dict(length=length, depth=depth, predictions=picked, score=result['score']))
  frame = summ.create_model_dataframe({MODEL: scores}, MODEL, 'origin_en')
  with contextlib.redirect_stdout(io.StringIO()):
    overall = summ.visualize(frame, os.path.join(oc.root, 'unused.png'), MODEL, 'origin_en')
  line = summ.plt.gca.return_value.twinx.return_value.plot.call_args[0][1]
  return dict(cells=cells, by_length=[float(v) for v in line], overall=float(overall))


def _paper(name: str, paths: dict, data: dict, special: dict, encoding) -> dict:
  grid = niah_inputs.GRIDS[name]
  with official.Official(paths['opencompass'], encoding) as oc:
    origin = oc.load(os.path.relpath(paths['origin'], oc.root),
                     'opencompass.datasets.needlebench.origin')
    build = official.prompt_builder(oc)
    config = oc.load(os.path.relpath(paths['dataset'], oc.root), 'needlebench_single_config')
    settings = _settings(config.needlebench_en_datasets)
    template = config.needlebench_en_datasets[0]['infer_cfg']['prompt_template']['template']
    out_col = settings['output_column']
    data_dir = os.path.dirname(data['haystack'])
    cells = []
    for length in grid['lengths']:
      for depth in grid['depths']:
        rows = origin.NeedleBenchOriginDataset.load(
            **_load_kwargs(settings, data_dir, length, depth, grid['repeats']))
        for r, (prompt, answer) in enumerate(zip(rows['prompt'], rows['answer'])):
          model_prompt = build(template, {'prompt': prompt, 'answer': answer}, out_col)
          cell = _cell(model_prompt, answer, length in niah_inputs.FULL_TEXT_LENGTHS)
          cells.append(dict(length=length, depth=depth, repeat=r,
                            template_is_identity=model_prompt == prompt,
                            answer_field_in_dataset_prompt='{answer}' in prompt, **cell))
    evaluator = origin.NeedleBenchOriginEvaluator()
    with contextlib.redirect_stdout(io.StringIO()):
      scored = evaluator.score([p for p, _, _ in niah_inputs.PREDICTIONS],
                               [f'\n{n}\n*{k}' for _, n, k in niah_inputs.PREDICTIONS])
    try:
      origin.NeedleBenchOriginDataset.load(**_load_kwargs(
          settings, os.path.dirname(special['haystack']), max(grid['lengths']), 50, 2))
      refused = None
    except ValueError as e:
      refused = dict(error=type(e).__name__, message=str(e)[:300])
    summary = _summary(paths['summarizer'], oc, evaluator)
  return dict(settings=settings, models=_model_entries(paths['eval']), grid=grid, cells=cells,
              evaluator=dict(scores=[d['score'] for d in scored['details']],
                             average=scored['score']),
              special_token=refused, summary=summary)


def record(sources: dict, work: str) -> dict:
  data = niah_inputs.write(os.path.join(work, 'data'))
  special = niah_inputs.write(os.path.join(work, 'special'), special=True)
  encoding = bpe.encoding(data['bpe'])
  inputs = {k: _sha(open(v, encoding='utf-8').read()) for k, v in data.items()}
  out = dict(inputs=inputs)
  for name, paths in _paths(sources).items():
    out[name] = _paper(name, paths, data, special, encoding)
  return out
