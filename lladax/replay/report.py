"""The miniature's results: one JSON, a markdown table, NIAH heatmaps and the perplexity plot.

NIAH accuracy is exact match of the decoded value (NeedleBench's score, which gives a miss a few
points for resembling the needle, is in the JSON too). "Near" cells hold the needle within the
last T tokens of the prompt, the distance the model was pre-trained on; "far" cells farther away:
LongLLaDA's "local perception" is high near and low far. Post-trained strategies are reported as
the mean and sample standard deviation over seeds.
"""
from __future__ import annotations

import math
import os
import platform
import shlex
import sys

import numpy as np

from lladax.evals import plots, results

EXACT = 'exact'


def _mean(values) -> float:
  values = [float(v) for v in values if not math.isnan(v)]
  return float(np.mean(values)) if values else math.nan


def _std(values) -> float:
  """Sample standard deviation over seeds (0 for one seed)."""
  values = [float(v) for v in values]
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def needle_distance(cell: dict) -> float:
  """Tokens between the needle and the end of the prompt (where the answer is decoded)."""
  return cell['prompt_tokens'] - cell['context_tokens'] * cell['depth'] / 100.0


def niah_summary(result: dict, train_length: int) -> dict:
  lengths = result['lengths']
  cells = result['cells']
  out = {'exact': {}, 'score': {}, 'near': {}, 'far': {}}
  for length in lengths:
    at = [c for c in cells if c['length'] == length]
    out['exact'][str(length)] = _mean(c['exact'] for c in at)
    out['score'][str(length)] = _mean(c['score'] for c in at)
    near = [c['exact'] for c in at if needle_distance(c) <= train_length]
    far = [c['exact'] for c in at if needle_distance(c) > train_length]
    out['near'][str(length)] = _mean(near)
    out['far'][str(length)] = _mean(far)
  out['grid_exact'] = result['grid']['exact']
  out['depths'] = result['depths']
  out['lengths'] = lengths
  return out


def summarise(rcfg, evaluated: dict) -> dict:
  """{'variants': per evaluated model, 'strategies': post-trained means over seeds}."""
  variants = {}
  for name, (variant, niah, ppl) in evaluated.items():
    variants[name] = {
        'rule': variant.rule, 'strategy': variant.strategy, 'seed': variant.seed,
        'rope_base': niah['rope']['base'], 'checkpoint': variant.checkpoint,
        'niah': niah_summary(niah, rcfg.train_length),
        'ppl': ppl['perplexity']['longllada'],
        'ppl_curve': ppl['curves']['longllada'],
    }
  strategies = {}
  for strategy in rcfg.strategies:
    runs = [v for v in variants.values() if v['strategy'] == strategy]
    if not runs:
      continue
    entry = {'seeds': [r['seed'] for r in runs], 'rope_base': runs[0]['rope_base']}
    for field in ('exact', 'near', 'far'):
      entry[field] = {l: {'mean': _mean(r['niah'][field][l] for r in runs),
                          'std': _std([r['niah'][field][l] for r in runs]),
                          'runs': [r['niah'][field][l] for r in runs]}
                      for l in runs[0]['niah'][field]}
    entry['ppl'] = {l: {'mean': _mean(r['ppl'][l] for r in runs),
                        'std': _std([r['ppl'][l] for r in runs]),
                        'runs': [r['ppl'][l] for r in runs]} for l in runs[0]['ppl']}
    grids = [r['niah']['grid_exact'] for r in runs]
    entry['grid_exact'] = [[_mean(g[i][j] for g in grids) for j in range(len(grids[0][i]))]
                           for i in range(len(grids[0]))]
    strategies[strategy] = entry
  return {'variants': variants, 'strategies': strategies}


def _fmt(value: float, digits: int = 0) -> str:
  return '–' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def _pm(entry: dict, digits: int = 0) -> str:
  """mean ± std over seeds; one seed has no spread to show."""
  if len(entry['runs']) < 2:
    return _fmt(entry['mean'], digits)
  return f'{_fmt(entry["mean"], digits)} ± {_fmt(entry["std"], digits)}'


def markdown_table(summary: dict) -> str:
  lengths = summary['lengths']
  t = summary['train_length']
  head = ([f'NIAH {l // t}T' for l in lengths] + [f'near/far {l // t}T' for l in lengths[1:]]
          + [f'PPL {l // t}T' for l in lengths])
  lines = ['| model | RoPE base | ' + ' | '.join(head) + ' |',
           '|---|---:|' + '---:|' * len(head)]
  names = {'none': 'base, direct extrapolation',
           'ntk': f'base + NTK (LongLLaDA) for {summary["post_length"] // t}T, no training',
           'diffusion_ntk': 'base + diffusion-aware NTK for '
                            f'{summary["post_length"] // t}T, no training'}
  for name, v in summary['variants'].items():
    if v['strategy']:
      continue
    n = v['niah']
    cols = ([_fmt(n['exact'][str(l)]) for l in lengths]
            + [f'{_fmt(n["near"][str(l)])}/{_fmt(n["far"][str(l)])}' for l in lengths[1:]]
            + [_fmt(v['ppl'][str(l)], 2) for l in lengths])
    lines.append(f'| {names.get(name, name)} | {v["rope_base"]:.4g} | ' + ' | '.join(cols) + ' |')
  for strategy, s in summary['strategies'].items():
    cols = ([_pm(s['exact'][str(l)]) for l in lengths]
            + [f'{_fmt(s["near"][str(l)]["mean"])}/{_fmt(s["far"][str(l)]["mean"])}'
               for l in lengths[1:]]
            + [_pm(s['ppl'][str(l)], 2) for l in lengths])
    lines.append(f'| post-trained at {summary["post_length"] // t}T, {strategy} '
                 f'(seeds {", ".join(map(str, s["seeds"]))}) | {s["rope_base"]:.4g} | '
                 + ' | '.join(cols) + ' |')
  return '\n'.join(lines)


def _figures(out_dir: str, summary: dict) -> dict:
  lengths = summary['lengths']
  depths = next(iter(summary['variants'].values()))['niah']['depths']
  pictures = {}
  panels = {n: v['niah']['grid_exact'] for n, v in summary['variants'].items()
            if not v['strategy']}
  panels.update({f'post_{s}': e['grid_exact'] for s, e in summary['strategies'].items()})
  for name, grid in panels.items():
    pictures[f'niah_{name}'] = results.try_plot(
        plots.heatmap, grid, lengths, depths, os.path.join(out_dir, f'niah_{name}.png'),
        f'{name}: exact match (%)')
  series = {n: (lengths, [v['ppl'][str(l)] for l in lengths])
            for n, v in summary['variants'].items() if not v['strategy']}
  series.update({f'post_{s}': (lengths, [e['ppl'][str(l)]['mean'] for l in lengths])
                 for s, e in summary['strategies'].items()})
  pictures['ppl'] = results.try_plot(plots.lines, series, os.path.join(out_dir, 'ppl.png'),
                                    'context length (tokens)', 'perplexity (bytes)',
                                    'perplexity against length')
  acc = {n: (lengths, [v['niah']['exact'][str(l)] for l in lengths])
         for n, v in summary['variants'].items() if not v['strategy']}
  acc.update({f'post_{s}': (lengths, [e['exact'][str(l)]['mean'] for l in lengths])
              for s, e in summary['strategies'].items()})
  pictures['niah_by_length'] = results.try_plot(
      plots.lines, acc, os.path.join(out_dir, 'niah_by_length.png'), 'context length (tokens)',
      'NIAH exact match (%)', 'needle retrieval against length')
  return pictures


def write(out_dir: str, rcfg, evaluated: dict, pretrained: dict, instructed: dict,
          posttrained: dict, seconds: dict, probes: dict) -> dict:
  """results.json, results.md and the pictures; `instructed` and `posttrained` map stage names
  to the train job's results."""
  os.makedirs(out_dir, exist_ok=True)
  summary = dict(summarise(rcfg, evaluated), lengths=list(rcfg.lengths),
                 train_length=rcfg.train_length, post_length=rcfg.post_length,
                 seconds=seconds, probes=probes,
                 training={'pretrain': pretrained['history'],
                           **{k: v['history'] for k, v in instructed.items()},
                           **{k: v['history'] for k, v in posttrained.items()}})
  summary['pictures'] = _figures(out_dir, summary)
  summary['command'] = command()
  summary['machine'] = machine()
  results.write_json(os.path.join(out_dir, 'results.json'), summary)
  with open(os.path.join(out_dir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(markdown(summary))
  return summary


def command() -> str:
  """The command line that ran this job, as a user would type it."""
  args = sys.argv[1:] if sys.argv and sys.argv[0].endswith('main.py') else sys.argv
  return ' '.join(['python -m lladax.main'] + [shlex.quote(a) for a in args])


def machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {'platform': device.platform, 'device': device.device_kind,
          'cpus': os.cpu_count(), 'jax': jax.__version__, 'python': platform.python_version()}


def probe_line(p: dict) -> str:
  """The base model's teacher-forced probes (lladax/replay/probe.py) as one sentence."""
  head = f'Base model, teacher-forced at T = {p["length"]} (one forward pass, no sampler): '
  if p.get('retrieval_value_tokens') == 1:   # one-digit values: no order to get wrong
    retrieval = (f'{100 * p["retrieval_exact"]:.1f}% of the needle values right on the '
                 f'{p["retrieval_prompts"]} 1T prompts (chance: 10%)')
  else:
    retrieval = (
        f'{100 * p["retrieval_digit_accuracy"]:.1f}% of the needle value\'s digits and '
        f'{100 * p["retrieval_exact"]:.1f}% of whole values right on the '
        f'{p["retrieval_prompts"]} 1T prompts (chance: 10% of digits), and '
        f'{100 * p["retrieval_from_value"]:.1f}% of the guessed digits occur somewhere in the '
        f'value (a uniform guess: {100 * p["retrieval_from_value_chance"]:.1f}%; well above '
        'that with only about 1/(distinct digits) of it right means the needle is found but '
        'its digits are not put in order)')
  return (head + retrieval + '; copying a masked quarter '
          f'of a held-out passage written twice: {100 * p["copy_accuracy_with_copy"]:.1f}% with '
          f'the first copy in context, {100 * p["copy_accuracy_without_copy"]:.1f}% without it '
          f'({p["copy_passages"]} passages; a gap means the copying circuit has formed).')


def markdown(summary: dict) -> str:
  """results.md: how it was made, the table, and where the time went."""
  m = summary['machine']
  seconds = summary['seconds']
  total = sum(seconds.values())
  groups = {'data': 0.0, 'pre-training': 0.0, 'post-training': 0.0, 'evaluation': 0.0}
  for name, value in seconds.items():
    key = ('data' if name == 'data' else
           'pre-training' if name == 'pretrain' or name.startswith('instruct') else
           'post-training' if name.startswith('post_') else 'evaluation')
    groups[key] += value
  lines = [
      '# Miniature replay: results', '',
      'Made by', '', '```bash', summary['command'], '```', '',
      f'on {m["device"]} ({m["platform"]}, {m["cpus"]} CPUs), jax {m["jax"]}, Python '
      f'{m["python"]}. NIAH columns are exact-match retrieval (%) over '
      f'{len(next(iter(summary["variants"].values()))["niah"]["depths"])} depths; near/far '
      'split each length\'s cells by whether the needle lies within T tokens of the answer; '
      'PPL is LongLLaDA\'s estimator on held-out prose (bytes). Post-trained rows are mean ± '
      'sample standard deviation over seeds.', '',
      markdown_table(summary), '',
      probe_line(summary['probes']), '',
      f'Wall time: {total / 60:.1f} min in all; '
      + ', '.join(f'{k} {v / 60:.1f} min' for k, v in groups.items()) + '.', '']
  return '\n'.join(lines)
