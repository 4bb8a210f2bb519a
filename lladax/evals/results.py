"""Results of evaluation jobs: the resumable store of finished cells, the loop that fills it, and
output files written whole (JSON, CSV, pictures)."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from lladax import files, multihost
from lladax.config import ConfigError, Recipe, refuse_other_settings
from lladax.evals.eval_settings import EvalConfig


def canonical(key: dict) -> str:
  return json.dumps(key, sort_keys=True, separators=(',', ':'))


def _jsonable(value):
  return json.loads(json.dumps(value, default=str))


class ResultStore:
  """Finished cells as JSON lines {"key": ..., "result": ...} after a header line holding the
  settings that produced them. A restart re-reads them and skips those cells; a line torn by a
  kill is dropped. Results made with other settings are refused rather than mixed in.

  `deviations` stay out of the header: they restate settings the header holds, or say which part
  of a paper's grid a run covers, and a run that is only extended (more lengths, samples or
  tasks) must reuse its finished cells."""

  def __init__(self, path: str, settings: dict, resume: bool = True):
    self.path = path
    self.settings = _jsonable({k: v for k, v in settings.items() if k != 'deviations'})
    self.results: dict[str, dict] = {}
    if resume and os.path.exists(path):
      self._read()
    self._file = None
    if multihost.is_writer():  # every process computes every cell; process 0 keeps them
      self._rewrite()
      self._file = open(path, 'a', encoding='utf-8')

  def _read(self):
    with open(self.path, encoding='utf-8') as f:
      lines = f.read().split('\n')
    header = None
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        if i == len(lines) - 1 or not any(l.strip() for l in lines[i + 1:]):
          break  # the last line, cut short by a kill
        raise ConfigError(f'{self.path} line {i + 1} is not JSON; delete the file or set '
                          '--config.eval.resume=False.') from None
      if header is None:
        header = record.get('settings')
        continue
      self.results[canonical(record['key'])] = record['result']
    if header is not None:
      refuse_other_settings(header, self.settings, self.path,
                            'delete it, set --config.eval.resume=False, or use another workdir.')

  def _rewrite(self):
    with files.replacing(self.path) as f:
      f.write(json.dumps({'settings': self.settings}) + '\n')
      for key, result in self.results.items():
        f.write(json.dumps({'key': json.loads(key), 'result': result}) + '\n')

  def __contains__(self, key: dict) -> bool:
    return canonical(key) in self.results

  def __len__(self) -> int:
    return len(self.results)

  def get(self, key: dict):
    return self.results.get(canonical(key))

  def add(self, key: dict, result: dict) -> None:
    result = _jsonable(result)
    if self._file:
      # One write of one whole line, flushed to disk: a kill leaves at most a torn last line.
      self._file.write(json.dumps({'key': key, 'result': result}) + '\n')
      self._file.flush()
      os.fsync(self._file.fileno())
    self.results[canonical(key)] = result

  def close(self):
    if self._file:
      self._file.close()


def run_cells(cells: Sequence[dict], store: ResultStore, compute: Callable[[list[dict]], list],
              batch_size: int, desc: str,
              group: Callable[[dict], Any] = lambda c: None) -> list[dict]:
  """Computes every cell the store lacks, `batch_size` at a time (a batch never mixes groups,
  e.g. context lengths), with a progress bar whose ETA counts only the remaining cells; closes
  the store however it ends and returns every cell with its result."""
  todo = [c for c in cells if c not in store]
  bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=desc, unit='cell',
             dynamic_ncols=True)
  try:
    batch: list[dict] = []
    for i, cell in enumerate(todo):
      batch.append(cell)
      last = i + 1 == len(todo)
      if len(batch) == batch_size or last or group(todo[i + 1]) != group(cell):
        for c, result in zip(batch, compute(batch)):
          store.add(c, result)
        bar.update(len(batch))
        batch = []
  finally:
    bar.close()
    store.close()
  return [dict(c, **store.get(c)) for c in cells]


def output_paths(recipe: Recipe, ecfg: EvalConfig, job: str) -> dict[str, str]:
  if not recipe.workdir:
    raise ConfigError('config.workdir is empty; pass --config.workdir=DIR, where the results, '
                      'the resumable cells and the pictures go.')
  os.makedirs(recipe.workdir, exist_ok=True)
  prefix = os.path.join(recipe.workdir, ecfg.output_name or job)
  return {k: f'{prefix}{suffix}' for k, suffix in (
      ('cells', '_cells.jsonl'), ('json', '_results.json'), ('csv', '_results.csv'),
      ('png', '.png'))}


def write_json(path: str, value) -> None:
  if not multihost.is_writer():   # output files are written once, by process 0
    return
  files.write_json(path, _jsonable(value), indent=2, ensure_ascii=False)


def write_csv(path: str, rows: Iterable[dict]) -> None:
  import csv  # pylint: disable=import-outside-toplevel
  rows = list(rows)
  if not multihost.is_writer():
    return
  with files.replacing(path, newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)


def try_plot(fn: Callable, *args, **kwargs) -> str | None:
  """Draws with matplotlib when it is installed; the numbers are in the JSON either way."""
  if not multihost.is_writer():
    return None
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    logging.warning('matplotlib is not installed, so no picture; pip install matplotlib.')
    return None
  return fn(*args, **kwargs)


def mean(values: Iterable[float]) -> float:
  values = list(values)
  return float(sum(values) / len(values)) if values else math.nan
