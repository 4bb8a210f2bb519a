"""The Grain input pipeline: documents from several sources, tokenized, packed into rows, batched.

  sources (indexed) ─► shuffle per source (seed; reshuffled each epoch) ─► repeat (epochs)
    ─► mix by weight ─► this process's share (i::n) ─► read + tokenize (threads, in order)
    ─► tally (skip empty / bad records, count; stop a stream without text)
    ─► pack (Grain; packing.py) ─► batch ─► layout

Everything before the tally is indexed, so the iterator's state is a handful of counters: a resumed
run sees exactly the batches it would have seen. The pipeline reports how many documents and tokens
it read, skipped and packed; at the end of a finite run tokens read == tokens packed.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
from typing import Any, Iterator

import grain
import numpy as np

from lladax.config import ConfigError, choice
from lladax.data import packing, sources, tokenizers

_BAD_LOGGED = 100       # bad records logged one by one; later ones are only counted
_SEED_STRIDE = 7919     # spreads the shuffle seeds of mixed sources apart (a prime)
EMPTY = 'empty document'  # what tokenize_document gives for a document without text (not None:
                          # Grain would drop a None silently, and skips must be counted)


def build(cfg: PipelineConfig, tokenizer, *, eos_id: int | None, bos_id: int | None = None,
          pad_id: int | None = None, eod_id: int | None = None, process_index: int = 0,
          process_count: int = 1) -> Pipeline:
  """The batch iterator for this process: share `process_index` of `process_count` of the data.

  Special ids come from the model config, never from the tokenizer: BOS / EOS are added per
  document as configured, `eod_id` (default EOS) separates documents under `packing='eod'`, and
  `pad_id` (default EOS) fills padding slots. With a mesh, take the process's share from
  global_batch.data_shard so that processes holding replicas of a row read the same rows.
  """
  if not 0 <= process_index < process_count:
    raise ConfigError(f'process_index={process_index} is outside 0..{process_count - 1}; pass the '
                      'shard from global_batch.data_shard(mesh, spec).')
  if cfg.add_bos and bos_id is None:
    raise ConfigError('config.pipeline.add_bos=True needs a BOS id; set the model\'s '
                      'bos_token_id or add_bos=False.')
  if cfg.add_eos and eos_id is None:
    raise ConfigError('config.pipeline.add_eos=True needs an EOS id; set the model\'s '
                      'eos_token_id or add_eos=False.')
  eod_id = eos_id if eod_id is None else eod_id
  if cfg.packing == 'eod' and eod_id is None:
    raise ConfigError("config.pipeline.packing='eod' needs an end-of-document id; pass eod_id or "
                      'eos_id.')
  if cfg.packing == 'concat' and cfg.add_eos and eod_id == eos_id:
    logging.warning("config.pipeline.packing='concat' with add_eos=True puts EOS between "
                    "documents, which makes it the 'eod' packing; set add_eos=False for plain "
                    'concatenation.')
  pad_id = eos_id if pad_id is None else pad_id
  if pad_id is None:
    raise ConfigError('the pipeline needs a padding id; pass pad_id or eos_id.')
  if not cfg.sources:
    raise ConfigError("config.pipeline.sources is empty; add one, e.g. 'jsonl:/data/pg19/*.jsonl'.")
  readers = {}
  for i, source in enumerate(cfg.sources):
    where = f'config.pipeline.sources[{i}]'
    readers[where] = sources.open_source(source, where)
  weights = [s.weight for s in cfg.sources]
  logging.info('data sources: %s', sources.describe(readers))
  docs = documents(list(readers.values()), weights, shuffle=cfg.shuffle, seed=cfg.seed,
                   num_epochs=cfg.num_epochs)
  docs = docs[process_index::process_count]
  tokenize = functools.partial(
      tokenize_document, encode=encoder(tokenizer), bos_id=bos_id if cfg.add_bos else None,
      eos_id=eos_id if cfg.add_eos else None, sep_id=eod_id if cfg.packing == 'eod' else None)
  threads = max(1, cfg.read_threads)
  stream = docs.map(tokenize).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(8, 4 * threads)))
  names = ', '.join(f'{w} ({s.kind}:{sources.expand(s.path)})'
                    for w, s in zip(readers, cfg.sources))
  tally = _TallyDataset(stream, fail=cfg.on_bad_record == 'fail', names=names,
                        patience=patience([len(r) for r in readers.values()], weights))
  rows = packing.pack(tally, seq_len=cfg.seq_len, fit=cfg.fit, bins=cfg.packing_bins,
                      seed=cfg.seed)
  fingerprint = dict(dataclasses.asdict(cfg), sources=[repr(s) for s in cfg.sources],
                     process_index=process_index, process_count=process_count,
                     ids=[eos_id, bos_id, pad_id, eod_id])
  for key in ('read_threads', 'log_every'):   # they change speed and logs, not the batches
    fingerprint.pop(key)
  fingerprint.pop('shards')   # a stream is named by process_index / process_count
  return Pipeline(cfg, rows.batch(cfg.batch_size), tally, pad_id=pad_id, fingerprint=fingerprint)


def documents(readers: list, weights: list[float], *, shuffle: bool, seed: int,
              num_epochs: int | None) -> grain.MapDataset:
  """The document stream (texts or sources.Bad), before any process takes its share.

  Each source is shuffled on its own and repeated, so it never shows a document twice before it
  has shown all of them. Endless (num_epochs None): weights are the sources' shares of the stream.
  Finite: every document of every source comes num_epochs times; weights set the interleaving
  while all sources last, and the sources that last longer finish the stream.
  """
  parts = []
  for k, reader in enumerate(readers):
    ds = grain.MapDataset.source(reader)
    if shuffle:
      ds = ds.shuffle(seed=(seed + _SEED_STRIDE * k) % 2**32)
    parts.append(ds.repeat(num_epochs))
  if len(parts) == 1:
    return parts[0]
  if num_epochs is None:
    return grain.MapDataset.mix(parts, weights)
  return grain.MapDataset.source(_Interleaved(parts, weights))


def interleave(lengths: list[int], weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
  """(source, index in source) of every element of finite sources, in stream order.

  Stride scheduling: element j of source k is due at (j + 1/2) / weight_k, so while all sources
  last each gets its weight's share, and nothing is left out when one runs dry.
  """
  due = np.concatenate([(np.arange(n) + 0.5) / w for n, w in zip(lengths, weights)])
  source = np.concatenate([np.full(n, k, np.int32) for k, n in enumerate(lengths)])
  local = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
  order = np.argsort(due, kind='stable')
  return source[order], local[order]


def patience(lengths: list[int], weights: list[float]) -> int:
  """Records skipped in a row after which the stream surely holds no text: two passes over the
  source the mix draws from least often (one pass can miss a document that moved between
  shuffles), and a margin for tiny sources."""
  total = sum(weights)
  return 2 * max(math.ceil(n * total / w) for n, w in zip(lengths, weights)) + 16


def encoder(tokenizer):
  """tokenizer.encode, or an equivalent without a Python list for the byte tokenizer."""
  if type(tokenizer) is tokenizers.ByteTokenizer:  # pylint: disable=unidiomatic-typecheck
    return lambda text: np.frombuffer(text.encode('utf-8'), np.uint8)
  return tokenizer.encode


def tokenize_document(doc: str | sources.Bad, *, encode, bos_id, eos_id, sep_id):
  """{'tokens': int32 [n]} for a document, or a marker the tally counts: sources.Bad or EMPTY."""
  if isinstance(doc, sources.Bad):
    return doc
  if not doc.strip():
    return EMPTY
  ids = encode(doc)
  if len(ids) == 0:   # pylint: disable=g-explicit-length-test
    return EMPTY
  return {'tokens': packing.document_tokens(ids, bos_id=bos_id, eos_id=eos_id, sep_id=sep_id)}


def _tuples(state: Any) -> Any:
  """Undoes JSON's tuple -> list for ConcatThenSplit, which compares its slices with tuples."""
  if isinstance(state, dict):
    return {k: ({f: tuple(s) for f, s in v.items()} if k == 'remainder_slices' else _tuples(v))
            for k, v in state.items()}
  if isinstance(state, list):
    return [_tuples(v) for v in state]
  return state


def format_stats(s: dict) -> str:
  return (f"data: {s['batches']:,} batches, {s['rows']:,} rows; packing efficiency "
          f"{100 * s['packing_efficiency']:.2f}% (real tokens / slots), "
          f"{s['documents_per_row']:.2f} documents per row; read {s['documents_read']:,} documents "
          f"({s['skipped_empty']:,} empty and {s['skipped_bad']:,} bad skipped), "
          f"{s['tokens_read']:,} tokens; packed {s['tokens_packed']:,} tokens")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  # Each source is a mapping of sources.SourceConfig fields (kind, path, text_field, weight) or
  # the shorthand 'kind:path', e.g. 'jsonl:/data/pg19/*.jsonl' or 'text:{stdlib}/**/*.py'.
  sources: tuple[Any, ...] = ()
  seq_len: int = 131072       # tokens per row
  batch_size: int = 1         # rows per batch from this process (global batch = this x data shards)
  packing: str = 'segment'    # segment (segment ids per document) | eod (EOD token between
                              # documents, one segment) | concat (plain concatenation)
  fit: str = 'split'          # split: rows filled to the brim, documents continue in the next row |
                              # first_fit | best_fit: documents kept whole, rows padded instead
  positions: str = 'auto'     # document (restart at each document piece) | row (run through the
                              # row) | auto: document for segment, row for eod and concat
  add_bos: bool = False       # BOS before every document
  add_eos: bool = True        # EOS after every document
  on_bad_record: str = 'skip'  # skip (log file:line, count) | fail (stop at the first one)
  shuffle: bool = True        # shuffle documents from seed, afresh each epoch; False: file order
  seed: int = 0
  num_epochs: int | None = None  # passes over every source; None: forever, sources mixed by
                                 # weight (a run stops by steps)
  read_threads: int = 4       # threads reading and tokenizing documents (results stay in order)
  packing_bins: int = 8       # first_fit / best_fit: rows packed together (more: less padding)
  log_every: int = 100        # batches between statistics lines; 0: only when the data ends
  shards: int = 0             # document streams the global batch is drawn from (shards.py); 0:
                              # one per process. A multiple of every process count the job runs
                              # on gives the same batches (and resumes) on any of them

  def __post_init__(self):
    choice(self.packing, packing.STRATEGIES, 'config.pipeline.packing')
    choice(self.fit, packing.FITS, 'config.pipeline.fit')
    choice(self.positions, packing.POSITIONS, 'config.pipeline.positions')
    choice(self.on_bad_record, ('skip', 'fail'), 'config.pipeline.on_bad_record')
    for name in ('seq_len', 'batch_size', 'packing_bins'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'config.pipeline.{name}={getattr(self, name)} must be positive.')
    if self.num_epochs is not None and self.num_epochs <= 0:
      raise ConfigError(f'config.pipeline.num_epochs={self.num_epochs} must be positive, or None '
                        'to run forever.')
    if not 0 <= self.seed < 2**32:
      raise ConfigError(f'config.pipeline.seed={self.seed} must be in 0..2**32-1.')
    entries = tuple(sources.source_config(e, f'config.pipeline.sources[{i}]')
                    for i, e in enumerate(self.sources))
    object.__setattr__(self, 'sources', entries)


class DataError(ConfigError):
  """A record that cannot be read while on_bad_record='fail'; the message names file and line."""


class _TallyIterator(grain.DatasetIterator):
  """Passes documents on and drops empty and bad records, counting all three.

  The counts are part of the iterator state, so when a packer rewinds its parent to re-read a
  document on restore, the counts rewind with it and nothing is counted twice.
  """

  def __init__(self, parent: grain.DatasetIterator, fail: bool, names: str, patience: int):
    super().__init__(parent)
    self._fail = fail
    self._names = names
    self._patience = patience
    self.counts = {'documents': 0, 'tokens': 0, 'empty': 0, 'bad': 0}
    self._dry = collections.Counter()   # records skipped since the last document, by problem
    self._example = ''

  def __next__(self):
    while True:
      try:
        item = next(self._parent)
      except StopIteration:
        if not self.counts['documents'] and self._dry:
          raise self._no_text() from None
        raise
      if isinstance(item, dict):
        self.counts['documents'] += 1
        self.counts['tokens'] += len(item['tokens'])
        self._dry.clear()
        self._example = ''
        return item
      self._note_dry(item)
      if not isinstance(item, sources.Bad):
        self.counts['empty'] += 1
        continue
      if self._fail:
        raise DataError(f'{item.where}: {item.reason}; fix or remove that record, or set '
                        "config.pipeline.on_bad_record='skip' to count and skip such records.")
      self.counts['bad'] += 1
      if self.counts['bad'] <= _BAD_LOGGED:
        logging.warning('skipping %s: %s%s', item.where, item.reason,
                        '' if self.counts['bad'] < _BAD_LOGGED else
                        ' (further bad records are counted, not logged)')

  def _note_dry(self, item):
    # An endless stream of records without text would be skipped for ever: stop it instead.
    bad = isinstance(item, sources.Bad)
    self._dry[item.kind if bad else 'empty'] += 1
    if bad and not self._example:
      self._example = f'; e.g. {item.where}: {item.reason}'
    if sum(self._dry.values()) >= self._patience:
      raise self._no_text()

  def _no_text(self) -> ConfigError:
    fix = ("set the sources' text_field to the key that holds the text" if self._dry['missing']
           else 'point config.pipeline.sources at files with text')
    return ConfigError(f'{self._names} gave no usable text in {sum(self._dry.values()):,} '
                       f'records in a row ({sources.tally(self._dry)}){self._example}; {fix}, '
                       'or fix their records.')

  def get_state(self) -> dict:
    return {'parent': self._parent.get_state(), 'counts': dict(self.counts)}

  def set_state(self, state: dict):
    self._parent.set_state(state['parent'])
    self.counts = dict(state['counts'])


class _TallyDataset(grain.IterDataset):
  """The tally as a Grain dataset; keeps its iterator so the pipeline can read the counts."""

  def __init__(self, parent: grain.IterDataset, fail: bool, names: str, patience: int):
    super().__init__(parent)
    self._fail = fail
    self._names = names
    self._patience = patience
    self.iterator: _TallyIterator | None = None

  def __iter__(self) -> _TallyIterator:
    self.iterator = _TallyIterator(self._parent.__iter__(), self._fail, self._names,
                                   self._patience)
    return self.iterator


class _Interleaved:
  """Finite sources interleaved by weight (see `interleave`), as one random-access source."""

  def __init__(self, parts: list[grain.MapDataset], weights: list[float]):
    self._parts = parts
    self._source, self._local = interleave([len(p) for p in parts], weights)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    return self._parts[self._source[index]][int(self._local[index])]


class Pipeline(Iterator[dict]):
  """Batches {tokens, segment_ids, positions: int32, loss_mask: bool} [batch_size, seq_len].

  get_state() is JSON-serialisable; set_state() on a pipeline built with the same settings
  continues exactly where the saved one was. The final batch of a finite run is filled up with
  empty rows (loss_mask False) so every batch has the same shape. Processes' shares of a finite
  run differ by up to a document, so they may end a batch apart: a multi-host run stops by steps.
  """

  def __init__(self, cfg: PipelineConfig, rows: grain.IterDataset, tally: _TallyDataset, *,
               pad_id: int, fingerprint: dict):
    self.cfg = cfg
    self._pad_id = pad_id
    self._fingerprint = json.loads(json.dumps(fingerprint))
    self._iter = rows.__iter__()
    self._tally = tally.iterator
    self._packed = {'batches': 0, 'rows': 0, 'filler_rows': 0, 'tokens': 0, 'pieces': 0}
    self._ended = False

  def __iter__(self):
    return self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    """Stops the reader threads; the iterator cannot be used afterwards."""
    self._iter.close()

  def __next__(self) -> dict:
    try:
      packed = next(self._iter)
    except StopIteration:
      if not self._ended:
        self._ended = True
        logging.info('%s (end of data)', format_stats(self.stats()))
      raise
    batch = packing.layout(packed, strategy=self.cfg.packing, positions=self.cfg.positions,
                           pad_id=self._pad_id)
    rows = batch['tokens'].shape[0]
    p = self._packed
    p['batches'] += 1
    p['rows'] += rows
    p['tokens'] += int(batch['loss_mask'].sum())
    p['pieces'] += int(packed['tokens_segment_ids'].max(axis=1).sum())
    if rows < self.cfg.batch_size:
      p['filler_rows'] += self.cfg.batch_size - rows
      batch = self._fill(batch)
    if self.cfg.log_every and p['batches'] % self.cfg.log_every == 0:
      logging.info(format_stats(self.stats()))
    return batch

  def _fill(self, batch: dict) -> dict:
    extra = self.cfg.batch_size - batch['tokens'].shape[0]
    shape = (extra, self.cfg.seq_len)
    filler = {'tokens': np.full(shape, self._pad_id, np.int32),
              'segment_ids': np.zeros(shape, np.int32), 'positions': np.zeros(shape, np.int32),
              'loss_mask': np.zeros(shape, bool)}
    return {k: np.concatenate([v, filler[k]]) for k, v in batch.items()}

  def stats(self) -> dict:
    """What the pipeline read, skipped and packed so far.

    documents_per_row counts document pieces (a document cut at a row end counts in both rows);
    slots include filler rows; tokens_read - tokens_packed is what the packer holds right now.
    """
    c, p = self._tally.counts, self._packed
    slots = (p['rows'] + p['filler_rows']) * self.cfg.seq_len
    return {
        'documents_read': c['documents'] + c['empty'] + c['bad'],
        'skipped_empty': c['empty'],
        'skipped_bad': c['bad'],
        'documents': c['documents'],
        'tokens_read': c['tokens'],
        'batches': p['batches'],
        'rows': p['rows'],
        'filler_rows': p['filler_rows'],
        'slots': slots,
        'tokens_packed': p['tokens'],
        'packing_efficiency': p['tokens'] / slots if slots else 0.0,
        'documents_per_row': p['pieces'] / p['rows'] if p['rows'] else 0.0,
    }

  def get_state(self) -> dict:
    state = {'version': 1, 'settings': self._fingerprint, 'grain': self._iter.get_state(),
             'packed': dict(self._packed)}
    return json.loads(json.dumps(state))

  def set_state(self, state: dict):
    saved = state.get('settings', {})
    for key, value in self._fingerprint.items():
      if saved.get(key) != value:
        raise ConfigError(f'the saved data state was made with {key}={saved.get(key)!r}, not '
                          f'{value!r}; restore it with the same config.pipeline, or start the '
                          'data afresh.')
    self._iter.set_state(_tuples(state['grain']))
    self._packed = dict(state['packed'])
    self._ended = False
