"""Model checkpoints for use: parameters (orbax) beside the model config (JSON).

Layout of a model directory:
  model_config.json   {'model': the ModelConfig (RoPE base already applied), 'tokenizer': ...,
                      anything else the writer recorded}
  params/             orbax PyTree checkpoint of the nnx.Param state (keys '<param>.value')
  tokenizer.json      converted checkpoints only; a relative tokenizer path in model_config.json
                      is resolved against the model directory, so the folder can move
Parameters are stored in the dtype they were written in (a converted LLaDA keeps bf16) and cast to
ModelConfig.param_dtype when loaded. Stacked [L, ...] parameters are chunked at most one layer per
chunk, so `save_streamed` writes them and `open_params` reads them a layer at a time.
Writes go to a temporary sibling that is renamed when complete, so a directory is never half
written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx

from lladax import hf_params, model as model_lib
from lladax.config import ConfigError, from_section
from lladax.model_config import ModelConfig, RopeConfig, resolve_rope

CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
# Storage chunks: small enough that a host writes or reads a stacked parameter a piece at a
# time, large enough that an 8B model is a few hundred chunks.
CHUNK_BYTES = 64 * 2**20


class StreamedArray:
  """A parameter to save without holding it in memory: `read(box)` returns the values of one
  storage chunk, `box` a tuple of slices, as a numpy array of `dtype`."""

  def __init__(self, shape: tuple[int, ...], dtype, read: Callable[[tuple], np.ndarray]):
    self.shape = tuple(int(d) for d in shape)
    self.dtype = np.dtype(dtype)
    self.read = read
    self.ndim = len(self.shape)
    self.size = int(np.prod(self.shape))


class _StreamedArrayHandler(ocp.type_handlers.NumpyHandler):
  """Writes a StreamedArray chunk by chunk into the same zarr array orbax writes for a numpy
  array, so the checkpoint restores with the standard handlers. Overrides NumpyHandler's private
  `_background_serialize` (orbax 0.12.8), where the whole array would be written at once; the
  convert and export tests break if a new orbax changes it."""

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)

  async def _background_serialize(self, values, infos, args=None):
    for value, info, arg in zip(values, infos, args):
      await info.await_path_creation()
      spec = ocp.type_handlers.get_json_tspec_write(
          info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=value.shape,
          local_shape=value.shape, dtype=value.dtype, process_index=jax.process_index(), arg=arg)
      store = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
      chunk = store.chunk_layout.write_chunk.shape
      # One chunk in flight at a time: host memory is one chunk plus what `read` holds.
      for box in _chunk_boxes(value.shape, chunk):
        piece = np.asarray(value.read(box), dtype=value.dtype)
        expected = tuple(s.stop - s.start for s in box)
        if piece.shape != expected:
          raise ValueError(f'{info.name}: read gave shape {piece.shape} for box {box}, '
                           f'expected {expected}')
        await store[box].write(piece, can_reference_source_data_indefinitely=True)


def _chunk_boxes(shape, chunk):
  grid = [range(0, n, c) for n, c in zip(shape, chunk)]
  for starts in np.ndindex(*[len(g) for g in grid]):
    yield tuple(slice(g[i], min(g[i] + c, n)) for g, i, c, n in zip(grid, starts, chunk, shape))


def _save_args(name: str) -> ocp.SaveArgs:
  # shard_axes=(0,) puts each layer of a stacked parameter in its own chunks.
  stacked = name.startswith('blocks.')
  return ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES, shard_axes=(0,) if stacked else ())


def _nest(flat: dict) -> dict:
  """{'blocks.q_proj': x} -> {'blocks': {'q_proj': {'value': x}}}: the key paths of the
  nnx.Param state, so load_model restores it into the model."""
  tree = {}
  for name, value in flat.items():
    node = tree
    for part in name.split('.'):
      node = node.setdefault(part, {})
    node['value'] = value
  return tree


@contextlib.contextmanager
def staging(path: str, overwrite: bool):
  """Yields a temporary directory that becomes `path` only if the block completes; on any error
  it is removed, so no half-written output is left behind."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise ConfigError(f'{path} already exists; remove it or choose another output directory.')
  tmp = path + '.tmp'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(path):
    shutil.rmtree(path)
  os.rename(tmp, path)


def _write_config(directory: str, cfg: ModelConfig, extra: dict | None) -> None:
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump({'model': dataclasses.asdict(cfg), **(extra or {})}, f, indent=2)


def save_model(path: str, model: model_lib.LLaDA, extra: dict | None = None,
               overwrite: bool = True) -> str:
  """Writes `model` (its config and parameters) to the model directory `path`."""
  flat = _flat_values(nnx.state(model, nnx.Param))
  with staging(path, overwrite) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), _nest(flat),
                 save_args=_nest({n: _save_args(n) for n in flat}))
    _write_config(tmp, model.cfg, extra)
  return os.path.abspath(path)


def _flat_values(tree) -> dict:
  """{'blocks.q_proj': leaf, ...} from a parameter tree whose leaves sit under a 'value' key."""
  out = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out['.'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in keys[:-1])] = leaf
  return out


def save_streamed(path: str, cfg: ModelConfig, params: dict[str, StreamedArray],
                  extra: dict | None = None, files: dict[str, str] | None = None,
                  overwrite: bool = False) -> str:
  """Writes a model directory whose parameters are produced chunk by chunk (see StreamedArray).

  `params` maps every parameter name of `cfg` ('wte', 'blocks.q_proj', ..., as
  hf_params.param_shapes) to its source; `files` maps file names to copy into the directory.
  """
  shapes = hf_params.param_shapes(cfg)
  if set(shapes) != set(params):
    raise ValueError(f'parameters {sorted(params)} do not match the model\'s {sorted(shapes)}')
  for name, shape in shapes.items():
    if params[name].shape != tuple(shape):
      raise ValueError(f'{name}: shape {params[name].shape}, the model needs {tuple(shape)}')
  registry = ocp.type_handlers.create_type_handler_registry(
      (StreamedArray, _StreamedArrayHandler()), (jax.Array, ocp.type_handlers.ArrayHandler()))
  # Plain zarr, not OCDBT: OCDBT commits every chunk write into one B-tree whose cached versions
  # grow with the number of writes (host memory ~1 MiB per 8 MiB written, measured), and is slower.
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, type_handler_registry=registry)
  with staging(path, overwrite) as tmp:
    for name, src in (files or {}).items():
      shutil.copyfile(src, os.path.join(tmp, name))
    with ocp.Checkpointer(handler) as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(
          _nest(params), save_args=_nest({n: _save_args(n) for n in params})))
    # The config last: a directory with model_config.json is complete even before the rename.
    _write_config(tmp, cfg, extra)
  return os.path.abspath(path)


def read_config(path: str) -> tuple[ModelConfig, dict]:
  """The ModelConfig stored at `path` and the rest of its metadata (tokenizer, source, ...)."""
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise ConfigError(f'{path} is not a lladax model directory (no {CONFIG_FILE}); pass the '
                      'folder a train or convert job wrote.')
  with open(file) as f:
    meta = json.load(f)
  tok = meta.get('tokenizer')
  if isinstance(tok, dict) and tok.get('path') and not os.path.isabs(tok['path']):
    inside = os.path.join(os.path.abspath(path), tok['path'])
    if os.path.exists(inside):
      meta['tokenizer'] = {**tok, 'path': inside}
  return from_section(ModelConfig, meta.pop('model'), f'{file}: model'), meta


def load_model(path: str, shardings=None, **overrides) -> tuple[model_lib.LLaDA, dict]:
  """The model stored at `path`, ready for logits, likelihood and sampling.

  `overrides` replace ModelConfig fields that do not change parameter shapes (dtype,
  param_dtype, attention_kernel, rope_theta, ...), e.g. to apply a training-free RoPE rule at
  evaluation: load_model(path, rope_theta=4 * theta) is LongLLaDA's scaling by 4.
  `shardings` (a function from the model's ModelConfig to the parameter shardings, e.g.
  from train_step.state_shardings) restores every tensor directly into its place on the mesh,
  so no host ever holds the whole model.
  """
  cfg, meta = read_config(path)
  cfg = dataclasses.replace(cfg, **overrides)
  abstract = model_lib.abstract(cfg)
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  if shardings is not None:
    leaves, treedef = jax.tree.flatten(abstract_params)
    places = jax.tree.leaves(shardings(cfg),
                             is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(places) != len(leaves):
      raise ValueError(f'{len(places)} shardings for {len(leaves)} parameters')
    abstract_params = jax.tree.unflatten(treedef, [
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) for a, s in zip(leaves, places)])
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(path), PARAMS_DIR), abstract_params)
  return nnx.merge(graphdef, params, rest), meta


def load_with_rope(path: str, rope: RopeConfig, **overrides) -> tuple[model_lib.LLaDA, dict]:
  """load_model with a RoPE scaling rule applied to the checkpoint's own base, as a recipe's
  `config.rope` asks (e.g. LongLLaDA's training-free NTK on a converted LLaDA-8B)."""
  scaled = resolve_rope(read_config(path)[0], rope)
  return load_model(path, rope_theta=scaled.rope_theta,
                    rope_position_scale=scaled.rope_position_scale, **overrides)


def open_params(path: str) -> dict[str, ts.TensorStore]:
  """Every stored parameter of the model directory `path` as a TensorStore array in its stored
  dtype, keyed 'wte', 'blocks.q_proj', ...: for reading a layer or a block of rows at a time."""
  directory = epath.Path(os.path.abspath(path)) / PARAMS_DIR
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(directory).item_metadata
  use_zarr3 = bool(getattr(tree, 'use_zarr3', False))
  ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)
  context = ocp.type_handlers.get_ts_context(use_ocdbt=ocdbt)
  out = {}
  for name in _flat_values(tree.tree):
    info = ocp.type_handlers.ParamInfo(name=f'{name}.value', parent_dir=directory,
                                       is_ocdbt_checkpoint=ocdbt, use_zarr3=use_zarr3)
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=ocdbt)
    out[name] = ts.open(ts.Spec(spec), open=True, read=True, context=context).result()
  return out
