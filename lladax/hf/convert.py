"""The convert job: a PyTorch LLaDA checkpoint (Hugging Face directory) -> a lladax model directory.

  python -m lladax.main --config configs/convert.py \
      --config.convert.source=/ckpt/LLaDA-8B-Base --config.convert.output=/ckpt/lladax-8b-base

or `convert(source, output)` from Python. Nothing in the checkpoint is executed: config.json is
read as JSON, safetensors shards through their header and byte offsets, `.bin` shards only with
torch.load(weights_only=True). Everything is checked (config fields, tensor names, shapes, dtypes,
shard sizes, the safetensors library's header checks) before anything is written. Parameters are
then written one storage chunk (at most one layer) at a time straight from the shards, so host
memory stays at a few tensors however large the model; they keep the checkpoint's dtype on disk
and are cast to `param_dtype` at load. A NaN or Inf weight stops the conversion as it is read.
The output must not overlap the source, and `overwrite` replaces only a lladax model directory,
removing the old one only once the new one is complete (saved_model.staging).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import ml_dtypes
import numpy as np
import safetensors

from lladax import model as model_lib, saved_model
from lladax.config import ConfigError, parse
from lladax.data import tokenizers
from lladax.hf import params as hf_params
from lladax.model_config import DTYPES


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
  source: str = ''        # a HF LLaDA directory: config.json + safetensors (or .bin) shards
  output: str = ''        # the lladax model directory to write
  param_dtype: str = ''   # dtype load_model gives the parameters; '' keeps the checkpoint's
  dtype: str = ''         # activation dtype; '' takes param_dtype (as PyTorch does)
  overwrite: bool = False  # replace an existing output directory

  def __post_init__(self):
    for field in ('param_dtype', 'dtype'):
      value = getattr(self, field)
      if value and value not in DTYPES:
        raise ConfigError(f'config.convert.{field}={value!r} is not one of '
                          f'{", ".join(map(repr, DTYPES))} (or empty for the checkpoint\'s).')


class SafetensorsShard:
  """One .safetensors file, read by byte ranges: one tensor (or a block of its rows) at a time."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(8)
      n = int.from_bytes(head, 'little') if len(head) == 8 else -1
      if n < 0 or 8 + n > size:
        raise ConfigError(f'{path} is truncated or not a safetensors file (its header runs past '
                          f'the end of the file at {size} bytes); download the shard again.')
      try:
        header = json.loads(f.read(n))
      except ValueError:
        raise ConfigError(f'{path} has an unreadable safetensors header; download the shard '
                          'again.') from None
    self.data_start = 8 + n
    self.tensors = {}  # name -> (dtype name, shape, begin, end)
    # Truncation, the likeliest damage, in words; then everything else the library checks.
    for name, end in _ends(header):
      if self.data_start + end > size:
        raise ConfigError(f'{path} is truncated: tensor {name} ends at byte '
                          f'{self.data_start + end} but the file has {size} bytes; download the '
                          'shard again.')
    _check_with_safetensors(path)
    for name, entry in header.items():
      if name != '__metadata__':
        begin, end = entry['data_offsets']
        self.tensors[name] = (entry['dtype'], tuple(entry['shape']), begin, end)

  def dtype(self, name: str) -> str:
    return self.tensors[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    return self.tensors[name][1]

  def read(self, name: str, rows: slice | None = None) -> np.ndarray:
    dtype_name, shape, begin, end = self.tensors[name]
    dtype = hf_params.SAFETENSORS_DTYPES[dtype_name]
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    start, stop = (0, shape[0]) if rows is None or not shape else (rows.start, rows.stop)
    offset = self.data_start + begin + start * row_bytes
    count = (stop - start) * row_bytes if shape else end - begin
    buf = np.empty(count, np.uint8)
    with open(self.path, 'rb', buffering=0) as f:
      f.seek(offset)
      view, done = memoryview(buf), 0
      while done < count:
        got = f.readinto(view[done:])
        if not got:
          raise ConfigError(f'{self.path} ended while reading tensor {name}; the shard is '
                            'truncated, download it again.')
        done += got
    return buf.view(dtype).reshape((stop - start,) + tuple(shape[1:]) if shape else ())


def _ends(header) -> list[tuple[str, int]]:
  """(tensor, end offset) for each well-formed entry of a safetensors header."""
  out = []
  for name, entry in (header.items() if isinstance(header, dict) else ()):
    offsets = entry.get('data_offsets') if isinstance(entry, dict) else None
    if name != '__metadata__' and isinstance(offsets, list) and offsets and isinstance(
        offsets[-1], int):
      out.append((name, offsets[-1]))
  return out


def _check_with_safetensors(path: str) -> None:
  """The safetensors library's own header checks (offsets in order, inside the file, covering it
  exactly, sized by shape and dtype), so the byte ranges read later are the tensors' own."""
  try:
    with safetensors.safe_open(path, framework='numpy'):
      pass
  except safetensors.SafetensorError as e:
    raise ConfigError(f'{path} fails the safetensors header checks ({e}); the shard is corrupt, '
                      'download it again.') from None


class TorchBinShard:
  """A pytorch_model*.bin file: torch.load(weights_only=True, mmap=True), so no pickled code
  runs and tensors are paged in one at a time."""

  def __init__(self, path: str):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(f'{path} is a PyTorch .bin checkpoint, which needs torch; pip install '
                        "'lladax[torch]' or convert the shards to safetensors.") from None
    self.path = path
    self._torch = torch
    try:
      self.state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f'{path} cannot be loaded as plain tensors (torch.load weights_only=True '
                        f'refused it: {str(e).splitlines()[0]}); convert it to safetensors with a '
                        'trusted tool.') from None
    self.tensors = {k: v for k, v in self.state.items() if isinstance(v, torch.Tensor)}
    if len(self.tensors) != len(self.state):
      odd = next(k for k in self.state if k not in self.tensors)
      raise ConfigError(f'{path}: entry {odd} is not a tensor; a weights file must hold only '
                        'tensors.')

  def dtype(self, name: str) -> str:
    names = {self._torch.bfloat16: 'BF16', self._torch.float16: 'F16',
             self._torch.float32: 'F32'}
    return names.get(self.tensors[name].dtype, str(self.tensors[name].dtype))

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.tensors[name].shape)

  def read(self, name: str, rows: slice | None = None) -> np.ndarray:
    t = self.tensors[name]
    if rows is not None and t.ndim:
      t = t[rows.start:rows.stop]
    t = t.contiguous()
    if t.dtype == self._torch.bfloat16:
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def _weights(source: str) -> tuple[str, dict[str, str]]:
  """(description, tensor name -> shard file) from the index, or the single weights file."""
  for index_name, single in (('model.safetensors.index.json', 'model.safetensors'),
                             ('pytorch_model.bin.index.json', 'pytorch_model.bin')):
    index = os.path.join(source, index_name)
    if os.path.exists(index):
      with open(index) as f:
        try:
          weight_map = json.load(f)['weight_map']
        except (ValueError, KeyError):
          raise ConfigError(f'{index} has no readable weight_map; download it again.') from None
      return index, weight_map
    if os.path.exists(os.path.join(source, single)):
      return os.path.join(source, single), {}
  raise ConfigError(f'{source} has no weights (model.safetensors[.index.json] or '
                    'pytorch_model.bin[.index.json]); point config.convert.source at a Hugging '
                    'Face LLaDA directory.')


class Source:
  """All tensors of a HF checkpoint directory, by name, whatever shard holds them."""

  def __init__(self, directory: str):
    self.where, weight_map = _weights(directory)
    files = sorted(set(weight_map.values())) or [os.path.basename(self.where)]
    self.shards = {}
    self.location = {}
    for file in files:
      path = os.path.join(directory, file)
      if not os.path.exists(path):
        listed = next(k for k, v in weight_map.items() if v == file)
        raise ConfigError(f'{self.where} puts tensor {listed} in {file}, which does not exist; '
                          'download the missing shard.')
      shard = SafetensorsShard(path) if file.endswith('.safetensors') else TorchBinShard(path)
      self.shards[file] = shard
      for name in shard.tensors:
        self.location[name] = file
    for name, file in weight_map.items():
      if self.location.get(name) != file:
        raise ConfigError(f'{self.where} puts tensor {name} in {file}, but that shard does not '
                          'hold it; download the shards and index again.')

  def dtype(self, name: str) -> str:
    return self.shards[self.location[name]].dtype(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return self.shards[self.location[name]].shape(name)

  def read(self, name: str, rows: slice | None = None) -> np.ndarray:
    shard = self.shards[self.location[name]]
    values = shard.read(name, rows)
    # Checked here, on the values being written, because a NaN would load silently and surface
    # only as a NaN loss.
    if not np.isfinite(values).all():
      raise ConfigError(f'{shard.path}: tensor {name} holds NaN or Inf values, so the checkpoint '
                        'is broken; download it again or convert one whose weights are finite.')
    return values


def check_tensors(source: Source, expected: dict[str, tuple[int, ...]], dtype: str) -> None:
  """Every expected tensor present with its shape and `dtype`, and nothing else."""
  for name, shape in expected.items():
    if name not in source.location:
      raise ConfigError(f'{source.where}: tensor {name} (shape {list(shape)}) is missing; the '
                        'weights do not match config.json (n_layers, weight_tying), so fix '
                        'config.json or download the missing shard.')
  for name in source.location:
    if name not in expected:
      raise ConfigError(f'{source.where}: unexpected tensor {name} {list(source.shape(name))}; '
                        'lladax ports LLaDA llama blocks without biases, fused projections or '
                        'q/k norms, so convert a checkpoint whose config.json and tensors match.')
  for name, shape in expected.items():
    if source.shape(name) != tuple(shape):
      raise ConfigError(f'tensor {name} has shape {list(source.shape(name))} but config.json '
                        f'implies {list(shape)}; fix config.json (d_model, n_heads, n_kv_heads, '
                        'mlp_hidden_size, embedding_size) or the checkpoint.')
    if source.dtype(name) != dtype:
      raise ConfigError(f'tensor {name} is {source.dtype(name)} but the checkpoint is {dtype} '
                        '(config.json torch_dtype, else the embedding); re-save all tensors in one '
                        f'of {", ".join(hf_params.SAFETENSORS_DTYPES)}.')


def _tokenizer(path: str) -> tokenizers.HFTokenizer:
  try:
    return tokenizers.HFTokenizer(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{path} cannot be read as a Hugging Face tokenizer ({e}); download it '
                      'again, or remove it and set config.tokenizer when using the model.'
                      ) from None


def _checkpoint_dtype(source: Source, hf: dict) -> str:
  """The safetensors dtype every tensor must have: config.json's torch_dtype, else the
  embedding's."""
  by_name = {hf_params.DTYPE_NAMES[v]: k for k, v in hf_params.SAFETENSORS_DTYPES.items()}
  if hf.get('torch_dtype') in by_name:
    return by_name[hf['torch_dtype']]
  if not source.location:
    raise ConfigError(f'{source.where} holds no tensors; download the checkpoint again.')
  wte = hf_params.hf_name('wte')
  found = source.dtype(wte) if wte in source.location else source.dtype(next(iter(source.location)))
  if found not in hf_params.SAFETENSORS_DTYPES:
    raise ConfigError(f'{source.where}: the weights are {found}; lladax reads '
                      f'{", ".join(hf_params.SAFETENSORS_DTYPES)}, so re-save the checkpoint in one of them.')
  return found


def _streamed(name: str, shape: tuple[int, ...], dtype: np.dtype,
              source: Source) -> saved_model.StreamedArray:
  """Parameter `name` as chunks read from `source`: a layer at a time for stacked parameters
  (the transformed layer is cached while its chunks are written), rows of the HF tensor for the
  embedding and head."""
  if hf_params.stacked(name):
    cache = {}

    def read_layer(box):
      i = box[0].start
      if i not in cache:
        cache.clear()
        w = source.read(hf_params.hf_name(name, i))
        cache[i] = hf_params.to_lladax(name, w, shape[1:])
      piece = cache[i][box[1:]][None]
      if i + 1 == shape[0] and all(b.stop == n for b, n in zip(box[1:], shape[1:])):
        cache.clear()  # the last chunk (chunks come in row-major order): free the layer
      return piece
    return saved_model.StreamedArray(shape, dtype, read_layer)

  hf = hf_params.hf_name(name)

  def read(box):
    if len(shape) == 1:
      return source.read(hf)[box]
    if name == 'lm_head':  # lladax [D, V] = HF [V, D].T: HF rows are lladax columns
      return source.read(hf, box[1]).T[box[0]]
    return source.read(hf, box[0])[:, box[1]]
  return saved_model.StreamedArray(shape, dtype, read)


def convert(source: str, output: str, param_dtype: str = '', dtype: str = '',
            overwrite: bool = False) -> str:
  """Converts the HF LLaDA checkpoint directory `source` into the lladax model directory `output`
  (loadable with lladax.saved_model.load_model); returns the output path."""
  start = time.perf_counter()
  saved_model.refuse_overlap(source, output, 'config.convert.source', 'config.convert.output')
  config_file = os.path.join(source, 'config.json')
  if not os.path.exists(config_file):
    raise ConfigError(f'{source} has no config.json; point config.convert.source at a Hugging '
                      'Face LLaDA directory.')
  with open(config_file) as f:
    try:
      hf = json.load(f)
    except ValueError:
      raise ConfigError(f'{config_file} is not valid JSON; download it again.') from None
  tok_file = os.path.join(source, hf_params.TOKENIZER_FILE)
  tok = _tokenizer(tok_file) if os.path.exists(tok_file) else None
  # The config first (cheap, and the likeliest mistake), then every shard header.
  cfg = hf_params.config_from_hf(hf, param_dtype='float32', dtype='float32', tokenizer=tok,
                                 where=config_file)
  if tok is not None and tok.vocab_size > cfg.vocab_size:
    raise ConfigError(f'{tok_file} has {tok.vocab_size} tokens but the embedding has '
                      f'{cfg.vocab_size} rows (config.json embedding_size); use the tokenizer '
                      'that belongs to this checkpoint.')
  src = Source(source)
  stored = _checkpoint_dtype(src, hf)
  check_tensors(src, hf_params.expected_tensors(cfg), stored)
  param_dtype = param_dtype or hf_params.DTYPE_NAMES[hf_params.SAFETENSORS_DTYPES[stored]]
  cfg = dataclasses.replace(cfg, param_dtype=param_dtype, dtype=dtype or param_dtype)
  shapes = model_lib.param_shapes(cfg)
  params = {n: _streamed(n, s, hf_params.SAFETENSORS_DTYPES[stored], src) for n, s in shapes.items()}
  extra = {'hf': {'source': os.path.abspath(source), 'config': hf}}
  files = {}
  if tok is not None:
    files[hf_params.TOKENIZER_FILE] = tok_file
    extra['tokenizer'] = {'kind': 'hf', 'path': hf_params.TOKENIZER_FILE}
  else:
    logging.warning('%s has no %s; pass --config.tokenizer.kind/path when using the model.',
                    source, hf_params.TOKENIZER_FILE)
  logging.info('converting %s parameters (%s) from %s', f'{cfg.num_params():,}', stored,
               src.where)
  path = saved_model.save_streamed(output, cfg, params, extra, files, overwrite,
                                  setting='config.convert.overwrite')
  logging.info('wrote %s in %.1f s', path, time.perf_counter() - start)
  return path


def run(config) -> str:
  c = parse(config).convert
  # Checked by the job, not the section: a recipe made for converting may run another job.
  if not c.source or not c.output:
    raise ConfigError('the convert job needs --config.convert.source=<HF checkpoint directory> '
                      'and --config.convert.output=<new lladax model directory>.')
  return convert(c.source, c.output, c.param_dtype, c.dtype, c.overwrite)
