"""Model checkpoints for use: parameters (orbax) beside the model config (JSON).

Layout of a model directory:
  model_config.json   {'model': the ModelConfig (RoPE base already applied), 'tokenizer': ...,
                      anything else the writer recorded}
  params/             orbax PyTree checkpoint of the nnx.Param state (keys '<param>.value')
  tokenizer.json      converted checkpoints only; a relative tokenizer path in model_config.json
                      is resolved against the model directory, so the folder can move
  checksums.json      the SHA-256 of every other file, written last and verified on load, so a
                      corrupt or truncated file is named instead of loading silently (directories
                      written before checksums load unverified, with a warning)
Parameters are stored in the dtype they were written in (a converted LLaDA keeps bf16) and cast to
ModelConfig.param_dtype when loaded. Stacked [L, ...] parameters are chunked at most one layer per
chunk, so `save_streamed` writes them and `open_params` reads them a layer at a time.
Writes go to a uniquely named sibling (`<dir>.tmp-XXXXXXXX`) that is renamed when complete, so a
directory is never half written and nothing the job did not create is ever deleted (`staging`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx

from lladax import model as model_lib, multihost
from lladax.config import ConfigError, from_section
from lladax.model_config import ModelConfig, RopeConfig, compute_overrides, resolve_rope

CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
CHECKSUM_FILE = 'checksums.json'
# How a damaged model directory is fixed, the end of every sentence that reports one.
_REWRITE = ('write the model directory again (rerun the train or convert job) or restore it from '
            'a copy')
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
def staging(path: str, overwrite: bool, marker: str = CONFIG_FILE, setting: str = 'overwrite'):
  """Yields a new, uniquely named directory beside `path` that becomes `path` only if the block
  completes, so no half-written output is ever left under the final name.

  Nothing the job did not create is deleted: on an error only that new directory is removed; a
  leftover of an interrupted save is reported, never touched. With `overwrite`, an existing `path`
  must be what a job of this kind writes (an empty directory or one holding `marker`); it is
  renamed aside, the new directory renamed into place, and only then is the old one removed.
  `setting` is how the user sets `overwrite` (e.g. 'config.convert.overwrite'), for the message.
  """
  path = os.path.abspath(path)
  _check_replaceable(path, overwrite, marker, setting)
  # Multi-host: every process writes its shards into one directory that process 0 names,
  # creates and renames; the others wait for it at each step.
  writer = multihost.is_writer()
  if writer:
    _warn_leftovers(path)
  tmp = multihost.writers_text(f'{path}.tmp-{uuid.uuid4().hex[:8]}')
  if writer:
    os.makedirs(tmp)
  multihost.barrier(f'created {tmp}')
  try:
    yield tmp
    multihost.barrier(f'wrote {tmp}')
    if writer:
      _replace(tmp, path)
    multihost.barrier(f'renamed {tmp}')
  except BaseException as e:
    if writer:
      shutil.rmtree(tmp, ignore_errors=True)  # ours; gone already if the rename happened
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      raise ConfigError(f'the disk is full while writing {path}; free space there or choose '
                        'another output directory, then run the job again.') from None
    raise


def _check_replaceable(path: str, overwrite: bool, marker: str, setting: str) -> None:
  if not os.path.lexists(path):
    return
  if not overwrite:
    raise ConfigError(f'{path} already exists; choose another output directory, or set '
                      f'{setting}=True to replace it.')
  if not os.path.isdir(path):
    raise ConfigError(f'{path} is a file, not an output directory, so overwrite will not replace '
                      'it; choose another output directory.')
  if os.listdir(path) and not os.path.exists(os.path.join(path, marker)):
    raise ConfigError(f'{path} is not a directory this job writes (it has no {marker}), so '
                      'overwrite will not replace it; choose another output directory.')


def _warn_leftovers(path: str) -> None:
  # Names only this module gives (and '.tmp', which older lladax used); removing them is the
  # user's call, since the job cannot tell its own leftovers from someone else's folder.
  for left in sorted(glob.glob(glob.escape(path) + '.tmp') +
                     glob.glob(glob.escape(path) + '.tmp-*') +
                     glob.glob(glob.escape(path) + '.old-*')):
    logging.warning('%s was left by an interrupted save of %s and is not used; remove it to free '
                    'the space once you have checked it holds nothing you need.', left, path)


def _replace(tmp: str, path: str) -> None:
  """Renames `tmp` to `path`; an existing `path` is moved aside first and removed only once the
  new one is in place, so a crash leaves the old output whole (under `<path>.old-XXXXXXXX`)."""
  if not os.path.lexists(path):
    os.rename(tmp, path)
    return
  aside = f'{path}.old-{uuid.uuid4().hex[:8]}'
  os.rename(path, aside)
  try:
    os.rename(tmp, path)
  except BaseException:
    os.rename(aside, path)
    raise
  try:
    if os.path.islink(aside):
      os.unlink(aside)  # the link the user had, never the folder it points to
    else:
      shutil.rmtree(aside)
  except OSError as e:
    logging.warning('could not remove the replaced output %s (%s); remove it by hand.', aside, e)


def refuse_overlap(source: str, output: str, source_name: str, output_name: str) -> None:
  """ConfigError when writing `output` could overwrite or delete `source`, the input being read:
  the same directory (through links too), one inside the other."""
  src, out = os.path.realpath(source), os.path.realpath(output)
  if src == out:
    relation = 'is the same directory as'
  elif out.startswith(src.rstrip(os.sep) + os.sep):
    relation = 'is inside'
  elif src.startswith(out.rstrip(os.sep) + os.sep):
    relation = 'contains'
  else:
    return
  raise ConfigError(f'{output_name}={output} {relation} {source_name}={source}, so writing it '
                    'could overwrite or delete what the job reads; choose an output directory '
                    'outside it.')


def _relative_files(directory: str) -> list[str]:
  out = []
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, '/')
      if rel != CHECKSUM_FILE:
        out.append(rel)
  return sorted(out)


def _sha256(file: str) -> str:
  with open(file, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _digests(directory: str, files: list[str]) -> dict[str, str]:
  # hashlib releases the GIL on large buffers: threads hash an 8B model's files in parallel.
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return dict(zip(files, pool.map(lambda f: _sha256(os.path.join(directory, f)), files)))


def write_checksums(directory: str) -> None:
  """Records the SHA-256 of every file under `directory` in CHECKSUM_FILE (call it last)."""
  digests = _digests(directory, _relative_files(directory))
  with open(os.path.join(directory, CHECKSUM_FILE), 'w') as f:
    json.dump({'sha256': digests}, f, indent=1, sort_keys=True)


_UNVERIFIED_WARNED = set()


def _recorded_checksums(path: str) -> dict[str, str] | None:
  file = os.path.join(path, CHECKSUM_FILE)
  if not os.path.exists(file):
    if path not in _UNVERIFIED_WARNED:
      _UNVERIFIED_WARNED.add(path)
      logging.warning('%s has no %s (written before lladax recorded checksums), so its files are '
                      'loaded unverified.', path, CHECKSUM_FILE)
    return None
  try:
    with open(file, 'rb') as f:
      recorded = json.load(f)['sha256']
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
      raise ValueError
  except (ValueError, KeyError, TypeError, AttributeError):
    raise ConfigError(f'{file} is unreadable; {_REWRITE}, or delete it to load the directory '
                      'unverified.') from None
  return recorded


def verify_checksums(path: str, params: bool) -> None:
  """ConfigError naming the first file of the model directory `path` (its params/ files if
  `params`, else the others) that is missing or does not match its recorded checksum."""
  recorded = _recorded_checksums(path)
  if recorded is None:
    return
  files = sorted(f for f in recorded if f.startswith(PARAMS_DIR + '/') == params)
  for rel in files:
    if not os.path.isfile(os.path.join(path, rel)):
      raise ConfigError(f'{os.path.join(path, rel)} is missing (it is listed in {CHECKSUM_FILE}); '
                        f'{_REWRITE}.')
  digests = _digests(path, files)
  for rel in files:
    if digests[rel] != recorded[rel]:
      raise ConfigError(f'{os.path.join(path, rel)} does not match its checksum in '
                        f'{CHECKSUM_FILE}, so it is corrupt or was changed; {_REWRITE} (or, '
                        f'after an edit made on purpose, remove its line from {CHECKSUM_FILE}).')


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
    multihost.barrier(f'saved the parameters of {path}')  # checksums cover every shard
    if multihost.is_writer():
      _write_config(tmp, model.cfg, extra)
      write_checksums(tmp)
  return os.path.abspath(path)


def _flat_values(tree) -> dict:
  """{'blocks.q_proj': leaf, ...} from a parameter tree whose leaves sit under a 'value' key."""
  out = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out['.'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in keys[:-1])] = leaf
  return out


def save_streamed(path: str, cfg: ModelConfig, params: dict[str, StreamedArray],
                  extra: dict | None = None, files: dict[str, str] | None = None,
                  overwrite: bool = False, setting: str = 'overwrite') -> str:
  """Writes a model directory whose parameters are produced chunk by chunk (see StreamedArray).

  `params` maps every parameter name of `cfg` ('wte', 'blocks.q_proj', ..., as
  model_lib.param_shapes) to its source; `files` maps file names to copy into the directory;
  `overwrite` and `setting` are staging's.
  """
  shapes = model_lib.param_shapes(cfg)
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
  with staging(path, overwrite, setting=setting) as tmp:
    for name, src in (files or {}).items():
      shutil.copyfile(src, os.path.join(tmp, name))
    with ocp.Checkpointer(handler) as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(
          _nest(params), save_args=_nest({n: _save_args(n) for n in params})))
    _write_config(tmp, cfg, extra)
    write_checksums(tmp)
  return os.path.abspath(path)


def read_config(path: str) -> tuple[ModelConfig, dict]:
  """The ModelConfig stored at `path` and the rest of its metadata (tokenizer, source, ...)."""
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise ConfigError(f'{path} is not a lladax model directory (no {CONFIG_FILE}); pass the '
                      'folder a train or convert job wrote.')
  try:
    with open(file, 'rb') as f:
      meta = json.load(f)
  except ValueError:
    meta = None
  if not isinstance(meta, dict) or not isinstance(meta.get('model'), dict):
    raise ConfigError(f'{file} is not valid JSON with a "model" section, so the model directory '
                      f'is damaged; {_REWRITE}.')
  # The fields first, so a wrong value is named as such; then any other change to the files.
  cfg = from_section(ModelConfig, meta.pop('model'), f'{file}: model')
  verify_checksums(path, params=False)
  tok = meta.get('tokenizer')
  if isinstance(tok, dict) and tok.get('path') and not os.path.isabs(tok['path']):
    inside = os.path.join(os.path.abspath(path), tok['path'])
    if os.path.exists(inside):
      meta['tokenizer'] = {**tok, 'path': inside}
  return cfg, meta


def _params_dir(path: str) -> str:
  """The verified params folder of the model directory `path`."""
  directory = os.path.join(os.path.abspath(path), PARAMS_DIR)
  if not os.path.isdir(directory):
    raise ConfigError(f'{directory} is missing, so the model directory is incomplete; '
                      f'{_REWRITE}.')
  verify_checksums(path, params=True)
  return directory


@contextlib.contextmanager
def _reading_params(directory: str):
  """Unreadable stored arrays (of a directory without checksums) as one sentence; what orbax and
  tensorstore raise for a damaged folder is one of these types, an out-of-memory error is not."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, OSError, KeyError, TypeError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise ConfigError(f'{directory} cannot be read ({first}), so the model directory is damaged; '
                      f'{_REWRITE}.') from None


def load_model(path: str, shardings=None, **overrides) -> tuple[model_lib.LLaDA, dict]:
  """The model stored at `path`, ready for logits, likelihood and sampling.

  `overrides` replace ModelConfig fields that do not change parameter shapes (dtype,
  param_dtype, attention_kernel, rope_theta, ...), e.g. to apply a training-free RoPE rule at
  evaluation: load_model(path, rope_theta=4 * theta) is LongLLaDA's scaling by 4.
  `shardings` (a function from the model's ModelConfig to the parameter shardings, e.g.
  from lladax/train/state.py) restores every tensor directly into its place on the mesh,
  so no host ever holds the whole model.
  """
  cfg, meta = read_config(path)
  return _restore(path, dataclasses.replace(cfg, **overrides), shardings), meta


def _restore(path: str, cfg: ModelConfig, shardings) -> model_lib.LLaDA:
  """The parameters at `path` restored into a model of `cfg` (the stored config, overridden)."""
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
  else:
    # Whole on this process's first device: without a target, orbax restores the layout the
    # writer had, which fails on another topology (a model trained by 2 processes, loaded in 1).
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract_params)
  directory = _params_dir(path)
  with _reading_params(directory), ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(directory, abstract_params)
  return nnx.merge(graphdef, params, rest)


def load_for_recipe(path: str, recipe: ModelConfig | None, rope: RopeConfig, shardings=None
                    ) -> tuple[model_lib.LLaDA, dict, ModelConfig]:
  """(model, meta, the checkpoint's own ModelConfig): the saved model as a recipe runs it, the one
  way every job loads `config.checkpoint`. Its shape is the checkpoint's; `rope` (config.rope)
  applies its rule to the checkpoint's own base (e.g. LongLLaDA's training-free NTK on a converted
  LLaDA-8B); `recipe` (config.model; None keeps the checkpoint's) sets how it computes
  (model_config.compute_overrides); `shardings` as for load_model."""
  cfg, meta, saved = config_for_recipe(path, recipe, rope)
  return _restore(path, cfg, shardings), meta, saved


def config_for_recipe(path: str, recipe: ModelConfig | None, rope: RopeConfig
                      ) -> tuple[ModelConfig, dict, ModelConfig]:
  """(the config load_for_recipe runs, meta, the checkpoint's own config), reading no weights."""
  saved, meta = read_config(path)
  scaled = resolve_rope(saved, rope)
  overrides = compute_overrides(recipe, saved) if recipe is not None else {}
  cfg = dataclasses.replace(saved, rope_theta=scaled.rope_theta,
                            rope_position_scale=scaled.rope_position_scale, **overrides)
  return cfg, meta, saved


def open_params(path: str) -> dict[str, ts.TensorStore]:
  """Every stored parameter of the model directory `path` as a TensorStore array in its stored
  dtype, keyed 'wte', 'blocks.q_proj', ...: for reading a layer or a block of rows at a time."""
  directory = _params_dir(path)
  with _reading_params(directory):
    return _open_stores(epath.Path(directory))


def _open_stores(directory: epath.Path) -> dict[str, ts.TensorStore]:
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(directory).item_metadata
  if tree is None:  # orbax logs why and returns nothing
    raise ValueError('no readable orbax metadata')
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
