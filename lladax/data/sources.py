"""Documents from local files (JSON lines, plain text, Parquet, ArrayRecord) as random-access lists.

Every source is indexed at start-up (which file holds document i, and where in it), so Grain can
shuffle by index, give each process its share and resume from a count without reading anything
twice. Reading document i returns its text, or a `Bad` record saying where and why it could not be
read; the pipeline decides whether that is skipped or fatal. Everything a user can get wrong about a
source (no path, no file, no documents, no text field, no record with text, a damaged Parquet
file) fails here, before training starts.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import json
import logging
import os
import sysconfig
import threading
from typing import Any, Mapping

import numpy as np

from lladax.config import ConfigError, choice, from_section

KINDS = ('jsonl', 'text', 'parquet', 'arrayrecord')
_SCAN_BYTES = 1 << 26       # newline scan chunk: bounds memory on multi-GB JSON-lines files
_FIELD_CHECK_LINES = 16     # lines per JSON-lines file searched for a record to check the field on
_PARQUET_GROUPS_CACHED = 4  # decoded row groups kept per source: random access decodes whole groups
_PROBE_RECORDS = 10_000     # records read at start-up looking for text (seconds at worst)
# Why a record gives no document, as counted: 'empty' (no text or only whitespace), or a Bad kind.
PROBLEMS = {'empty': 'empty', 'malformed': 'malformed', 'missing': 'missing the text field',
            'not_text': 'not text'}


def expand(pattern: str) -> str:
  return pattern.replace('{stdlib}', sysconfig.get_paths()['stdlib'])


def resolve(pattern: str) -> list[str]:
  """The files a path names, sorted: a file, the non-hidden files under a folder, or a glob's."""
  path = expand(pattern)
  if os.path.isdir(path):
    found = []
    for root, dirs, files in os.walk(path):
      dirs[:] = [d for d in dirs if not d.startswith('.')]
      found += [os.path.join(root, f) for f in files if not f.startswith('.')]
  elif glob.has_magic(path):
    found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
  else:
    found = [path] if os.path.isfile(path) else []
  return sorted(found)


def source_config(entry: Any, where: str) -> SourceConfig:
  """A checked SourceConfig from a recipe entry: a mapping of its fields, or 'kind:path'."""
  if isinstance(entry, str):
    kind, sep, path = entry.partition(':')
    if not sep or kind not in KINDS:
      raise ConfigError(f"{where}={entry!r} is not 'kind:path'; start it with one of "
                        f'{", ".join(KINDS)} and a colon, or give a mapping.')
    entry = SourceConfig(kind=kind, path=path)
  elif not isinstance(entry, SourceConfig):
    entry = from_section(SourceConfig, entry, where)
  choice(entry.kind, KINDS, f'{where}.kind')
  if entry.weight <= 0:
    raise ConfigError(f'{where}.weight={entry.weight} must be positive; raise it or remove the '
                      'source.')
  if entry.kind in ('jsonl', 'parquet') and not entry.text_field:
    raise ConfigError(f'{where}.text_field is empty; set it to the {entry.kind} key that holds '
                      'the text.')
  return entry


def line_index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Byte (start, end) and 1-based line number of every non-blank line of a file."""
  size = os.path.getsize(path)
  if size == 0:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty
  data = np.memmap(path, np.uint8, mode='r')
  newlines = np.concatenate([np.flatnonzero(data[o:o + _SCAN_BYTES] == 10) + o
                             for o in range(0, size, _SCAN_BYTES)]).astype(np.int64)
  starts = np.concatenate([[0], newlines + 1])
  ends = np.concatenate([newlines, [size]])
  lengths = ends - starts
  lone_cr = np.zeros(len(starts), bool)
  one = np.flatnonzero(lengths == 1)
  lone_cr[one] = data[starts[one]] == 13
  # Blank lines (a trailing newline, CRLF files) are not records in JSON lines.
  keep = (lengths > 0) & ~lone_cr
  lines = np.arange(1, len(starts) + 1, dtype=np.int64)
  return starts[keep], ends[keep], lines[keep]


def decode(raw: bytes, where: str, *, number_lines: bool = False) -> str | Bad:
  """Strict UTF-8; a bad byte is reported at `where` (with ':line' appended for whole files)."""
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    if number_lines:
      line = raw.count(b'\n', 0, e.start) + 1
      where = f'{where}:{line}'
    return Bad(where, f'invalid UTF-8 at byte {e.start}')


def missing_field(raw: bytes, field: str) -> list[str] | None:
  """The keys of a readable JSON object that lacks `field`; None if it has it or is unreadable."""
  try:
    record = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  if isinstance(record, dict) and field not in record:
    return sorted(record)
  return None


def text_of(record: Any, field: str, where: str) -> str | Bad:
  """The text under `field` of a parsed JSON record; null counts as an empty document."""
  if not isinstance(record, dict):
    return Bad(where, f'the record is a JSON {type(record).__name__}, not an object')
  if field not in record:
    return Bad(where, f'the record has no {field!r} field', 'missing')
  value = record[field]
  if value is None:
    return ''
  if not isinstance(value, str):
    return Bad(where, f'field {field!r} holds a {type(value).__name__}, not a string', 'not_text')
  return value


def load_json(raw: bytes, where: str) -> Any:
  """The parsed JSON value of a record, or Bad if it is not UTF-8 or not JSON."""
  text = decode(raw, where)
  if isinstance(text, Bad):
    return text
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    return Bad(where, f'bad JSON ({e.msg} at column {e.colno})')


def parse_json(raw: bytes, field: str, where: str) -> str | Bad:
  record = load_json(raw, where)
  return record if isinstance(record, Bad) else text_of(record, field, where)


def open_source(cfg: SourceConfig, where: str):
  """The reader for one source, indexed; fails naming the setting if it cannot yield documents."""
  if not cfg.path:
    raise ConfigError(f'{where}.path is empty; set it to a file, a folder or a glob of {cfg.kind} '
                      'files.')
  paths = resolve(cfg.path)
  if not paths:
    raise ConfigError(f'{where}.path={expand(cfg.path)!r} matches no file; point it at existing '
                      f'{cfg.kind} files (a file, a folder or a glob).')
  reader = {'jsonl': JsonLines, 'text': TextFiles, 'parquet': ParquetFiles,
            'arrayrecord': ArrayRecords}[cfg.kind](paths, cfg.text_field, where)
  if len(reader) == 0:
    raise ConfigError(f'{where}.path={expand(cfg.path)!r} holds no documents in its {len(paths)} '
                      f'file(s); point it at non-empty {cfg.kind} files.')
  check_text(reader, cfg, where)
  return reader


def problem(doc: str | Bad) -> str | None:
  """Why a record gives no document (a key of PROBLEMS), or None when it holds text."""
  if isinstance(doc, Bad):
    return doc.kind
  return None if doc.strip() else 'empty'


def tally(counts: Mapping[str, int]) -> str:
  """'3 empty, 2 malformed' from counts keyed by PROBLEMS."""
  return ', '.join(f'{counts[k]:,} {PROBLEMS[k]}' for k in PROBLEMS if counts.get(k))


def no_text_fix(counts: Mapping[str, int], where: str) -> str:
  if counts.get('missing'):
    return f'set {where}.text_field to the key that holds the text, or fix the records'
  return f'point {where}.path at files with text, or fix the records'


def check_text(reader, cfg: SourceConfig, where: str) -> None:
  """Reads records from the first until one holds text, so a source with none fails at start-up.

  Without this an endless stream would skip its records for ever and never make a batch. A source
  whose first _PROBE_RECORDS records hold no text is only warned about: the pipeline's tally stops
  the run if the rest hold none either.
  """
  counts = collections.Counter()
  example = None
  n = min(len(reader), _PROBE_RECORDS)
  for i in range(n):
    doc = reader[i]
    why = problem(doc)
    if why is None:
      return
    counts[why] += 1
    if example is None and isinstance(doc, Bad):
      example = f'; e.g. {doc.where}: {doc.reason}'
  name = f'{where} ({cfg.kind}:{expand(cfg.path)})'
  if n < len(reader):
    logging.warning('%s: the first %s records hold no text (%s%s); the run stops if none does',
                    name, f'{n:,}', tally(counts), example or '')
    return
  raise ConfigError(f'{name} holds no usable text: of its {n:,} record(s), {tally(counts)}'
                    f'{example or ""}; {no_text_fix(counts, where)}.')


def describe(readers: Mapping[str, Any]) -> str:
  return ', '.join(f'{name}: {len(r):,} documents in {len(r.paths):,} file(s)'
                   for name, r in readers.items())


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  kind: str = 'jsonl'       # jsonl | text (one file = one document) | parquet | arrayrecord
  path: str = ''            # a file, a folder (every file under it) or a glob (** recurses);
                            # '{stdlib}' expands to Python's standard library folder
  text_field: str = 'text'  # jsonl, parquet: the key / column holding the text; arrayrecord: ''
                            # when records are raw UTF-8 text, else the key of JSON-object records
  weight: float = 1.0       # share of documents drawn from this source when several are mixed


@dataclasses.dataclass(frozen=True)
class Bad:
  """A record that could not be read: where it is ('file:line'), why, and which PROBLEMS kind."""
  where: str
  reason: str
  kind: str = 'malformed'   # malformed | missing (no text field) | not_text (field of another type)


class _Files:
  """Documents spread over files: global index -> (file, index in file)."""

  def __init__(self, paths: list[str], counts: list[int]):
    self.paths = paths
    self._ends = np.cumsum(counts, dtype=np.int64)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def locate(self, index: int) -> tuple[int, int]:
    f = int(np.searchsorted(self._ends, index, side='right'))
    return f, int(index - (self._ends[f - 1] if f else 0))


class TextFiles(_Files):
  """Each file is one document, read as strict UTF-8."""

  def __init__(self, paths: list[str], field: str, where: str):
    del field, where
    super().__init__(paths, [1] * len(paths))

  def __getitem__(self, index: int) -> str | Bad:
    path = self.paths[index]
    with open(path, 'rb') as f:
      return decode(f.read(), path, number_lines=True)


class JsonLines(_Files):
  """One JSON object per line; the text is under `field`. Blank lines are not records."""

  def __init__(self, paths: list[str], field: str, where: str):
    self._field = field
    self._index = [line_index(p) for p in paths]
    super().__init__(paths, [len(starts) for starts, _, _ in self._index])
    for path, (starts, ends, lines) in zip(paths, self._index):
      self._check_field(path, starts, ends, lines, where)

  def _check_field(self, path, starts, ends, lines, where):
    # A wrong text_field would make every record bad: catch it on the first readable record.
    with open(path, 'rb') as f:
      for start, end, line in list(zip(starts, ends, lines))[:_FIELD_CHECK_LINES]:
        f.seek(start)
        raw = f.read(end - start)
        keys = missing_field(raw, self._field)
        if keys is not None:
          raise ConfigError(f'{path}:{line} has no {self._field!r} field (its keys: '
                            f'{", ".join(map(repr, keys[:8])) or "none"}); set {where}.text_field '
                            'to the key that holds the text.')
        if isinstance(parse_json(raw, self._field, ''), str):
          return

  def __getitem__(self, index: int) -> str | Bad:
    f, j = self.locate(index)
    starts, ends, lines = self._index[f]
    with open(self.paths[f], 'rb') as fh:
      fh.seek(int(starts[j]))
      raw = fh.read(int(ends[j] - starts[j]))
    return parse_json(raw, self._field, f'{self.paths[f]}:{int(lines[j])}')


class ParquetFiles(_Files):
  """One row per document; the text is column `field`. Row groups are decoded whole and cached."""

  def __init__(self, paths: list[str], field: str, where: str):
    try:
      import pyarrow  # pylint: disable=import-outside-toplevel
      import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(f'{where} reads Parquet, which needs pyarrow; pip install pyarrow.'
                        ) from None
    self._pq = pq
    self._errors = (OSError, ValueError, pyarrow.ArrowException)  # what damaged files raise
    self._field = field
    self._where = where
    self._groups = []   # per file: cumulative rows at the end of each row group
    for path in paths:
      parquet = self._open(path)
      meta = parquet.metadata
      names = [meta.schema.column(i).name for i in range(meta.num_columns)]
      if field not in names:
        raise ConfigError(f'{path} has no column {field!r} (its columns: '
                          f'{", ".join(map(repr, names[:8]))}); set {where}.text_field to the '
                          'column that holds the text.')
      self._check_type(path, parquet.schema_arrow)
      self._groups.append(np.cumsum([meta.row_group(g).num_rows
                                     for g in range(meta.num_row_groups)], dtype=np.int64))
    super().__init__(paths, [int(g[-1]) if len(g) else 0 for g in self._groups])
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def _unreadable(self, path: str, what: str, error: Exception) -> ConfigError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip('.')
    return ConfigError(f'{path} {what} ({reason}); replace the file, or leave it out of '
                       f'{self._where}.path.')

  def _open(self, path: str):
    try:
      return self._pq.ParquetFile(path)
    except self._errors as e:
      raise self._unreadable(path, 'is not a readable Parquet file', e) from None

  def _check_type(self, path: str, schema) -> None:
    # A column of numbers would make every row a bad record: refuse it before training starts.
    i = schema.get_field_index(self._field)
    if i >= 0 and not _holds_text(schema.field(i).type):  # i < 0: a nested leaf, checked per row
      raise ConfigError(f'{path} column {self._field!r} holds {schema.field(i).type}, not text; '
                        f'set {self._where}.text_field to the column that holds the text.')

  def _column(self, f: int, g: int):
    with self._lock:
      if (f, g) in self._cache:
        self._cache.move_to_end((f, g))
        return self._cache[(f, g)]
    try:
      column = self._open(self.paths[f]).read_row_group(g, columns=[self._field])
    except self._errors as e:
      # Damaged data, not a bad record: every row of the group is lost, so stop and say where.
      raise self._unreadable(self.paths[f], f'row group {g} cannot be read', e) from None
    column = column.column(0)
    with self._lock:
      self._cache[(f, g)] = column
      while len(self._cache) > _PARQUET_GROUPS_CACHED:
        self._cache.popitem(last=False)
    return column

  def __getitem__(self, index: int) -> str | Bad:
    f, j = self.locate(index)
    ends = self._groups[f]
    g = int(np.searchsorted(ends, j, side='right'))
    k = j - (int(ends[g - 1]) if g else 0)
    where = f'{self.paths[f]} row {j}'
    try:
      value = self._column(f, g)[k].as_py()
    except UnicodeDecodeError as e:
      return Bad(where, f'invalid UTF-8 at byte {e.start}')
    if value is None:
      return ''
    if isinstance(value, bytes):
      return decode(value, where)
    if not isinstance(value, str):
      return Bad(where, f'column {self._field!r} holds a {type(value).__name__}, not text',
                 'not_text')
    return value


def _holds_text(kind) -> bool:
  """Whether a pyarrow type reads as str or bytes (or only nulls), dictionary-encoded or not."""
  import pyarrow.types as t  # pylint: disable=import-outside-toplevel
  if t.is_dictionary(kind):
    kind = kind.value_type
  return (t.is_string(kind) or t.is_large_string(kind) or t.is_binary(kind) or
          t.is_large_binary(kind) or t.is_null(kind) or
          getattr(t, 'is_string_view', t.is_string)(kind))


class ArrayRecords(_Files):
  """One record per document: raw UTF-8 text (field '') or a JSON object holding it under field."""

  def __init__(self, paths: list[str], field: str, where: str):
    from grain import sources  # pylint: disable=import-outside-toplevel
    self._field = field
    self._readers = [sources.ArrayRecordDataSource([p]) for p in paths]
    super().__init__(paths, [len(r) for r in self._readers])
    for path, reader in zip(paths, self._readers):
      keys = missing_field(reader[0], field) if field and len(reader) else None
      if keys is not None:
        raise ConfigError(f'{path} record 0 has no {field!r} field (its keys: '
                          f'{", ".join(map(repr, keys[:8])) or "none"}); set {where}.text_field to '
                          "the key that holds the text, or to '' if records are plain text.")

  def __getitem__(self, index: int) -> str | Bad:
    f, j = self.locate(index)
    raw = self._readers[f][j]
    where = f'{self.paths[f]} record {j}'
    return parse_json(raw, self._field, where) if self._field else decode(raw, where)
