"""Where training metrics go: the console (progress bar), a JSON-lines file and TensorBoard.

Only process 0 writes files. Paths may be local or gs:// (etils.epath); TensorBoard event files
are written locally under the workdir when it is local, and skipped with a note otherwise. A run
that resumes from step N first drops what a killed run wrote after N (those steps come again),
so every step is in metrics.jsonl once.
"""
from __future__ import annotations

import json
import logging
import math

import jax
from etils import epath

from lladax import files


class MetricsWriter:
  """start_step: the step this run starts from; records of later steps are dropped first. None
  appends to whatever is there."""

  def __init__(self, workdir: str, tensorboard: bool = True, start_step: int | None = None):
    self._lines = None
    self._tb = None
    if not workdir or jax.process_index() != 0:
      return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    lines = root / 'metrics.jsonl'
    if start_step is not None:
      drop_after(lines, start_step)
    # Append: a resumed run continues the same file.
    self._lines = lines.open('a')
    if tensorboard:
      if str(workdir).startswith('gs://'):
        logging.info('TensorBoard events are written only for a local workdir; metrics.jsonl '
                     'has every value')
      else:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

        # purge_step: TensorBoard hides the events a killed run wrote from there on.
        self._tb = SummaryWriter(str(root / 'tensorboard'),
                                 purge_step=None if start_step is None else start_step + 1)

  def write(self, step: int, record: dict) -> None:
    if self._lines:
      self._lines.write(json.dumps({'step': step, **record}) + '\n')
      self._lines.flush()
    if self._tb:
      for key, value in record.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def close(self) -> None:
    if self._lines:
      self._lines.close()
    if self._tb:
      self._tb.close()


def drop_after(path: epath.Path, step: int) -> None:
  """Rewrites the JSON-lines file `path` without records after `step` (and without a line torn
  by a kill), through a temporary file renamed over it."""
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  keep = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
  if len(keep) == len(lines):
    return
  tmp = path.parent / files.temporary_name(path.name)   # epath: gs:// too
  tmp.write_text(''.join(line + '\n' for line in keep))
  tmp.replace(path)
  logging.info('%s: dropped %d records after step %d, where this run resumes', path,
               len(lines) - len(keep), step)


def _step_of(line: str) -> int | None:
  try:
    step = json.loads(line).get('step')
  except (ValueError, AttributeError):
    return None
  return step if isinstance(step, int) else None
