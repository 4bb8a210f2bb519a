"""The export job: a lladax model directory -> a Hugging Face LLaDA directory for PyTorch.

  python -m lladax.main --config configs/export.py --config.checkpoint=/ckpt/lladax-8b-sft \
      --config.export.output=/ckpt/LLaDA-8B-sft-hf --config.export.copy_from=/ckpt/LLaDA-8B-Base

writes sharded safetensors (`model-0000N-of-0000M.safetensors`), `model.safetensors.index.json`,
`config.json` (the original config.json the model was converted from, with lladax's values) and
`tokenizer.json`. `copy_from` copies the non-weight files of an original HF directory (its
`modeling_llada.py`/`configuration_llada.py` that transformers loads, tokenizer files); nothing is
executed. Tensors keep the stored dtype unless `dtype` is set, so importing then exporting gives
back the original bytes. Tensors are read and written a layer (or a block of rows) at a time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time

import numpy as np

from lladax import model as model_lib, saved_model
from lladax.config import ConfigError, parse
from lladax.hf import params as hf_params
from lladax.model_config import DTYPES

# Files of a HF directory that are weights or are rewritten here, so copy_from skips them.
_NOT_COPIED = ('config.json', 'model.safetensors.index.json', 'pytorch_model.bin.index.json')
_BLOCK_BYTES = saved_model.CHUNK_BYTES


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  output: str = ''                   # the Hugging Face directory to write
  dtype: str = ''                    # tensor dtype; '' keeps the stored one (bit-exact round trip)
  max_shard_bytes: int = 5_000_000_000  # start a new safetensors file past this size
  copy_from: str = ''                # a HF LLaDA directory whose code and tokenizer files to copy
  overwrite: bool = False            # replace an existing output directory

  def __post_init__(self):
    if self.dtype and self.dtype not in DTYPES:
      raise ConfigError(f'config.export.dtype={self.dtype!r} is not one of '
                        f'{", ".join(map(repr, DTYPES))} (or empty to keep the stored dtype).')
    if self.max_shard_bytes <= 0:
      raise ConfigError('config.export.max_shard_bytes must be positive.')


def write_safetensors(path: str, tensors: list) -> None:
  """Writes `tensors`, a list of (name, shape, numpy dtype, pieces) where `pieces()` yields the
  tensor's bytes in order as arrays, to a safetensors file without holding more than a piece."""
  header, offset = {}, 0
  for name, shape, dtype, _ in tensors:
    size = int(np.prod(shape)) * dtype.itemsize
    header[name] = {'dtype': hf_params.SAFETENSORS_NAMES[dtype], 'shape': list(shape),
                    'data_offsets': [offset, offset + size]}
    offset += size
  header['__metadata__'] = {'format': 'pt'}
  raw = json.dumps(header, separators=(',', ':')).encode()
  raw += b' ' * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
  with open(path, 'wb') as f:
    f.write(len(raw).to_bytes(8, 'little'))
    f.write(raw)
    for name, shape, dtype, pieces in tensors:
      written = 0
      for piece in pieces():
        piece = np.ascontiguousarray(piece, dtype=dtype)
        f.write(piece.view(np.uint8).data)
        written += piece.nbytes
      if written != header[name]['data_offsets'][1] - header[name]['data_offsets'][0]:
        raise ValueError(f'{name}: wrote {written} bytes, expected shape {list(shape)}')


def _block(store, axis: int) -> int:
  """How many rows along `axis` to read at once: whole storage chunks, about _BLOCK_BYTES."""
  chunk = store.chunk_layout.read_chunk.shape[axis] or 1
  row = int(np.prod(store.shape)) // store.shape[axis] * store.dtype.numpy_dtype.itemsize
  return chunk * max(1, _BLOCK_BYTES // max(1, row * chunk))


def _hf_tensors(name: str, store, dtype: np.dtype) -> list:
  """The HF tensors of lladax parameter `name`, as write_safetensors entries."""
  shape = tuple(store.shape)
  out_shape = hf_params.hf_shape(name, shape)
  if hf_params.stacked(name):
    step = store.chunk_layout.read_chunk.shape[0] or 1
    cache = {}

    def layer(i):
      # A stored chunk may hold several layers (e.g. one chunk per array); read it once.
      start = i - i % step
      if start not in cache:
        cache.clear()
        cache[start] = store[start:min(start + step, shape[0])].read().result()
      value = cache[start][i - start]
      if i + 1 == min(start + step, shape[0]):
        cache.clear()
      return hf_params.to_hf(name, value, out_shape).astype(dtype)
    return [(hf_params.hf_name(name, i), out_shape, dtype, lambda i=i: [layer(i)])
            for i in range(shape[0])]

  def pieces():
    if len(shape) == 1:
      yield store.read().result().astype(dtype)
      return
    # HF rows: the embedding's rows, the head's columns (lladax lm_head is [D, V]).
    axis = 1 if name == 'lm_head' else 0
    rows = _block(store, axis)
    for r in range(0, out_shape[0], rows):
      box = slice(r, min(r + rows, out_shape[0]))
      if axis:
        yield np.ascontiguousarray(store[:, box].read().result().T).astype(dtype)
      else:
        yield store[box].read().result().astype(dtype)
  return [(hf_params.hf_name(name), out_shape, dtype, pieces)]


def _shards(tensors: list, max_bytes: int) -> list[list]:
  shards, size = [[]], 0
  for t in tensors:
    n = int(np.prod(t[1])) * t[2].itemsize
    if shards[-1] and size + n > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += n
  return shards


def _template(copy_from: str, meta: dict) -> dict | None:
  if copy_from and os.path.exists(os.path.join(copy_from, 'config.json')):
    with open(os.path.join(copy_from, 'config.json')) as f:
      return json.load(f)
  return (meta.get('hf') or {}).get('config')


def export(checkpoint_dir: str, output: str, dtype: str = '',
           max_shard_bytes: int = 5_000_000_000, copy_from: str = '',
           overwrite: bool = False) -> str:
  """Writes the lladax model directory `checkpoint_dir` as a HF LLaDA directory `output`;
  returns the output path."""
  start = time.perf_counter()
  if copy_from and not os.path.isdir(copy_from):
    raise ConfigError(f'config.export.copy_from={copy_from} is not a directory; pass the '
                      'original Hugging Face checkpoint folder or leave it empty.')
  saved_model.refuse_overlap(checkpoint_dir, output, 'config.checkpoint', 'config.export.output')
  if copy_from:
    saved_model.refuse_overlap(copy_from, output, 'config.export.copy_from',
                              'config.export.output')
  cfg, meta = saved_model.read_config(checkpoint_dir)
  stores = saved_model.open_params(checkpoint_dir)
  for name, shape in model_lib.param_shapes(cfg).items():
    if name not in stores or tuple(stores[name].shape) != tuple(shape):
      found = list(stores[name].shape) if name in stores else 'nothing'
      raise ConfigError(f'{checkpoint_dir} stores {found} for parameter {name} but its '
                        f'{saved_model.CONFIG_FILE} implies {list(shape)}; export the directory a '
                        'train or convert job wrote, unmodified.')
  order = ['wte', *(f'blocks.{n}' for n in model_lib.BLOCK_PARAMS), 'ln_f']
  order += [] if cfg.weight_tying else ['lm_head']
  tensors = []
  for name in order:
    out_dtype = np.dtype(DTYPES[dtype]) if dtype else stores[name].dtype.numpy_dtype
    if out_dtype not in hf_params.SAFETENSORS_NAMES:
      raise ConfigError(f'parameter {name} is stored as {out_dtype}, which safetensors for '
                        'LLaDA does not take; set config.export.dtype=bfloat16 or float32.')
    tensors += _hf_tensors(name, stores[name], out_dtype)
  hf = hf_params.config_to_hf(cfg, hf_params.DTYPE_NAMES[tensors[0][2]], _template(copy_from, meta))
  shards = _shards(tensors, max_shard_bytes)
  with saved_model.staging(output, overwrite, marker='config.json',
                          setting='config.export.overwrite') as tmp:
    if copy_from:
      for file in sorted(os.listdir(copy_from)):
        src = os.path.join(copy_from, file)
        if os.path.isfile(src) and file not in _NOT_COPIED and not file.endswith(
            ('.safetensors', '.bin', '.pt', '.pth')):
          shutil.copyfile(src, os.path.join(tmp, file))
    tok = meta.get('tokenizer') or {}
    if tok.get('kind') == 'hf' and not os.path.exists(os.path.join(tmp, hf_params.TOKENIZER_FILE)):
      src = tok['path']
      src = os.path.join(src, hf_params.TOKENIZER_FILE) if os.path.isdir(src) else src
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(tmp, hf_params.TOKENIZER_FILE))
    weight_map = {}
    for i, shard in enumerate(shards):
      file = ('model.safetensors' if len(shards) == 1 else
              f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors')
      logging.info('writing %s (%d tensors)', file, len(shard))
      write_safetensors(os.path.join(tmp, file), shard)
      weight_map.update({t[0]: file for t in shard})
    if len(shards) > 1:
      total = sum(int(np.prod(t[1])) * t[2].itemsize for t in tensors)
      with open(os.path.join(tmp, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(hf, f, indent=2)
  if not copy_from:
    logging.info('transformers loads LLaDA with its remote code: copy configuration_llada.py and '
                 'modeling_llada.py from the original checkpoint into %s (or pass '
                 'config.export.copy_from).', output)
  logging.info('exported %s in %.1f s', os.path.abspath(output), time.perf_counter() - start)
  return os.path.abspath(output)


def run(config) -> str:
  recipe = parse(config)
  path = recipe.checkpoint_for('the lladax model directory to export')
  c = recipe.export
  if not c.output:   # checked by the job: a recipe made for exporting may run another job
    raise ConfigError('the export job needs --config.export.output=<new Hugging Face directory>.')
  return export(path, c.output, c.dtype, c.max_shard_bytes, c.copy_from, c.overwrite)
