"""Whole-file writes: a reader, or a kill half-way, sees the old file or the new one, never half
of one, and no other file is touched (the temporary name is the job's own, unique)."""
from __future__ import annotations

import contextlib
import json
import os
import uuid


def temporary_name(name: str) -> str:
  """A hidden name beside `name` that no user file and no other run has."""
  return f'.{name}.{uuid.uuid4().hex[:8]}.tmp'


@contextlib.contextmanager
def replacing(path: str, binary: bool = False, newline: str | None = None):
  """Yields a new file (opened 'x' for writing, text in UTF-8 unless `binary`) beside `path`,
  which replaces `path` when the block completes and is removed if it fails."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, temporary_name(os.path.basename(path)))
  try:
    if binary:
      with open(tmp, 'xb') as f:
        yield f
    else:
      with open(tmp, 'x', encoding='utf-8', newline=newline) as f:
        yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_json(path: str, value, **dump) -> str:
  """`value` as JSON in `path`, whole (json.dump's keyword arguments in `dump`)."""
  with replacing(path) as f:
    json.dump(value, f, **dump)
  return path
