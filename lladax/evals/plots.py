"""Pictures of results, drawn like the papers' figures. matplotlib is imported here only, when a
job draws, so the library works without it (jobs check with results.try_plot)."""
from __future__ import annotations

from typing import Mapping, Sequence

from lladax import files


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str) -> str:
  with files.replacing(path, binary=True) as f:
    fig.savefig(f, format='png', dpi=110, bbox_inches='tight')
  return path


def _length_label(n: int) -> str:
  return f'{n / 1024:g}K' if n >= 1024 and n % 1024 == 0 else (
      f'{n / 1000:g}k' if n >= 1000 and n % 1000 == 0 else str(n))


def heatmap(scores: Sequence[Sequence[float]], lengths: Sequence[int], depths: Sequence[float],
            path: str, title: str = '') -> str:
  """NIAH heatmap as in NeedleBench / LongLLaDA: context length on x, needle depth on y (0% at
  the top), red (0) to green (100), each cell annotated with its mean score."""
  plt = _pyplot()
  from matplotlib.colors import LinearSegmentedColormap  # pylint: disable=import-outside-toplevel
  cmap = LinearSegmentedColormap.from_list('niah', ['#F0496E', '#EBB839', '#0CD79F'])
  grid = [[scores[i][j] for i in range(len(lengths))] for j in range(len(depths))]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * len(lengths) + 1.8),
                                  max(3.0, 0.36 * len(depths) + 1.2)))
  image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=100, aspect='auto')
  ax.set_xticks(range(len(lengths)), [_length_label(l) for l in lengths], fontsize=8)
  ax.set_yticks(range(len(depths)), [f'{d:g}' for d in depths], fontsize=8)
  ax.set_xlabel('context length (tokens)')
  ax.set_ylabel('needle depth (%)')
  for j in range(len(depths)):
    for i in range(len(lengths)):
      if grid[j][i] == grid[j][i]:  # not NaN
        ax.text(i, j, f'{grid[j][i]:.0f}', ha='center', va='center', fontsize=6)
  fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label='score')
  if title:
    ax.set_title(title, fontsize=9)
  path = _save(fig, path)
  plt.close(fig)
  return path


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str,
          xlabel: str, ylabel: str, title: str = '', log_y: bool = False) -> str:
  """One line per named series of (x, y): perplexity or a score against context length."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 3.6))
  for name, (x, y) in series.items():
    ax.plot(list(x), list(y), marker='o' if len(x) <= 40 else None, markersize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  path = _save(fig, path)
  plt.close(fig)
  return path
