"""Where training metrics go: the console (progress bar), a JSON-lines file and TensorBoard.

Only process 0 writes files. Paths may be local or gs:// (etils.epath); TensorBoard event files
are written locally under the workdir when it is local, and skipped with a note otherwise.
"""
from __future__ import annotations

import json
import logging
import math

import jax
from etils import epath


class MetricsWriter:

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._lines = None
    self._tb = None
    if not workdir or jax.process_index() != 0:
      return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    # Append: a resumed run continues the same file (steps after the resume overwrite nothing).
    self._lines = (root / 'metrics.jsonl').open('a')
    if tensorboard:
      if str(workdir).startswith('gs://'):
        logging.info('TensorBoard events are written only for a local workdir; metrics.jsonl '
                     'has every value')
      else:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._tb = SummaryWriter(str(root / 'tensorboard'))

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
