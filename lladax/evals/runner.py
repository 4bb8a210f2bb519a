"""What every evaluation job shares: loading the model once, the one place the model is called,
batching, the resumable store of finished cells, progress, and atomic output files.

Every model call of every job goes through `ModelGenerator` (sampling) or `ModelScorer`
(cross-entropy of masked tokens), so a faster attention kernel (`config.model.attention_kernel`)
or a device mesh (`config.eval.mesh_hook`) applies to all of them. An oracle implementing the
same `Generator` interface replaces the model to prove a job's pipeline right.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import math
import os
from typing import Any, Callable, Iterable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from lladax import checkpoint, diffusion, files, model_config, sampler
from lladax.config import ConfigError, choice, from_section
from lladax.data import tokenizers
from lladax.evals import protocols


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: how any evaluation job runs (what it measures is in its own section)."""
  batch_size: int = 1        # prompts decoded together, left-padded (rows per forward for ppl)
  pad_multiple: int = 256    # prompt widths are rounded up (to at least 1/8 of their power of
                             # two) so that few shapes compile; padding is never attended to
  mesh_hook: str = ''        # 'module:function' called as fn(model, config) -> (model, put) or
                             # (model, put, context): the model placed on a mesh, put(array)
                             # placing a [B, T] batch (batch over data axes, length over the
                             # context axis) and context() entered around every model call
                             # (e.g. the mesh); '' = one device
  oracle: bool = False       # replace the model by the job's oracle, which reads the answer off
                             # the prompt: a perfect score proves the pipeline (no checkpoint needed)
  resume: bool = True        # reuse the finished cells of <workdir>/<job>_cells.jsonl
  output_name: str = ''      # file prefix of the outputs; '' = the job's name (niah, ruler, ...)
  # How prompts become tokens, outputs become text and what the sampler may predict; '' = the
  # benchmark protocol's (lladax/evals/protocols.py). Another value is recorded as a deviation.
  prompt_tokens: str = ''    # tokenizer (its own special tokens, none for LLaDA) | bos
  decode: str = ''           # skip_special (all tokens, special ones skipped) | until_eos
  mask_prediction: str = ''  # allow (LLaDA's generate.py) | ban

  def __post_init__(self):
    if self.batch_size <= 0 or self.pad_multiple <= 0:
      raise ConfigError('config.eval.batch_size and pad_multiple must be positive.')
    for name, options in (('prompt_tokens', protocols.PROMPT_TOKENS),
                          ('decode', protocols.DECODE),
                          ('mask_prediction', protocols.MASK_PREDICTION)):
      if getattr(self, name):
        choice(getattr(self, name), options, f'config.eval.{name}')
    if self.mesh_hook and ':' not in self.mesh_hook:
      raise ConfigError(f'config.eval.mesh_hook={self.mesh_hook!r} must be "module:function".')


def eval_config(config) -> EvalConfig:
  return from_section(EvalConfig, config.get('eval'), 'config.eval')


def bucket(n: int, multiple: int) -> int:
  """n rounded up to a multiple of max(multiple, 1/8 of n's power of two): at most ~12% padding
  and a handful of compiled shapes per doubling of the length."""
  step = max(multiple, 2 ** max(0, n.bit_length() - 4))
  return -(-n // step) * step


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(config, meta: dict | None) -> tokenizers.Tokenizer:
  tcfg = from_section(tokenizers.TokenizerConfig, config.tokenizer, 'config.tokenizer')
  return tokenizers.load(tcfg, meta)


def _compute_overrides(config, saved: model_config.ModelConfig) -> dict:
  """How the recipe asks the network to run (the compute settings it sets); the shape always
  comes from the checkpoint. Attention options belong to a kernel: a recipe that picks another
  kernel than the checkpoint's runs it with the recipe's options, not the checkpoint's."""
  section = config.get('model') or {}
  out = {name: section[name] for name in model_config.COMPUTE_FIELDS
         if name in section and section[name] not in (None, '', ())}
  if 'attention_options' in out:
    out['attention_options'] = tuple(out['attention_options'])
  if out.get('attention_kernel', saved.attention_kernel) != saved.attention_kernel:
    out.setdefault('attention_options', ())
  return out


def load(config, oracle: bool = True) -> tuple[Any, tokenizers.Tokenizer, dict]:
  """(model, tokenizer, info) for `config.checkpoint` with `config.rope`'s rule applied to the
  checkpoint's own base; `info` is what every results file records about the model.
  oracle: whether the job has an oracle to offer instead when the checkpoint is missing."""
  if not config.get('checkpoint'):
    instead = (', or --config.eval.oracle=True to check the pipeline without a model'
               if oracle else '')
    raise ConfigError('config.checkpoint is empty; pass --config.checkpoint=DIR (a model folder '
                      f'from the train or convert job){instead}.')
  saved = checkpoint.read_config(config.checkpoint)[0]
  rope_cfg = from_section(model_config.RopeConfig, config.get('rope'), 'config.rope')
  model, meta = checkpoint.load_with_rope(config.checkpoint, rope_cfg,
                                          **_compute_overrides(config, saved))
  tok = load_tokenizer(config, meta)
  cfg = model.cfg
  info = {
      'checkpoint': os.path.abspath(config.checkpoint),
      'rope': {'rule': rope_cfg.rule, 'target_length': rope_cfg.target_length,
               'checkpoint_base': saved.rope_theta, 'base': cfg.rope_theta,
               'scale': cfg.rope_theta / saved.rope_theta,
               'position_scale': cfg.rope_position_scale},
      'model': {'params': cfg.num_params(), 'trained_length': cfg.max_sequence_length,
                'dtype': cfg.dtype, 'param_dtype': cfg.param_dtype,
                'attention_kernel': cfg.attention_kernel},
      'tokenizer': meta.get('tokenizer'),
  }
  logging.info('loaded %s (%s parameters), RoPE base %.6g (%s), attention %s',
               info['checkpoint'], f'{cfg.num_params():,}', cfg.rope_theta, rope_cfg.rule,
               cfg.attention_kernel)
  return model, tok, info


def oracle_info(config) -> dict:
  return {'checkpoint': 'oracle', 'rope': None, 'model': None,
          'tokenizer': dict(config.tokenizer)}


def mesh_hook(name: str) -> Callable:
  module, _, fn = name.partition(':')
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f'config.eval.mesh_hook={name!r} cannot be imported ({e}); name an '
                      'importable "module:function".') from None


def place(model, config, ecfg: EvalConfig):
  """(model, put, context): on one device put is jnp.asarray and context does nothing; a mesh
  hook shards the model and the batches and may name a context for the calls."""
  if not ecfg.mesh_hook:
    return model, jnp.asarray, contextlib.nullcontext
  placed = tuple(mesh_hook(ecfg.mesh_hook)(model, config))
  return placed if len(placed) == 3 else (*placed, contextlib.nullcontext)


# ---------------------------------------------------------------------------------------------
# The model behind the two interfaces jobs use


class Generator(Protocol):
  """Text in, text out: continuations of `prompts` decoded with sampler settings `cfg`."""

  def generate(self, prompts: Sequence[str], cfg: sampler.SamplerConfig,
               seed: int = 0) -> list[str]: ...


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _tail_cross_entropy(graphdef, state, tokens, segment_ids, targets):
  """CE of the last W = targets.shape[1] positions; only they go through the LM head, so a 128K
  prefix never materialises [T, vocab] logits."""
  model = nnx.merge(graphdef, state)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  hidden = model.hidden(tokens, positions, segment_ids)
  logits = model.logits(hidden[:, -targets.shape[1]:])
  return diffusion.token_cross_entropy(logits, targets)


LLADAX_GENERATION = protocols.GENERATION['lladax']


class ModelGenerator:
  """The LLaDA sampler behind `Generator`: prompt tokens as `generation.prompt_tokens` says,
  left-padded batches of `batch_size` whose widths are bucketed, decoded, turned into text as
  `generation.decode` says."""

  def __init__(self, model, tokenizer, batch_size: int = 1, pad_multiple: int = 256,
               put: Callable = jnp.asarray, context: Callable = contextlib.nullcontext,
               generation: protocols.Generation = LLADAX_GENERATION):
    self.model, self.tokenizer, self.put, self.context = model, tokenizer, put, context
    self.batch_size, self.pad_multiple, self.generation = batch_size, pad_multiple, generation
    cfg = model.cfg
    self.bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    self.eos = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)

  def prompt_ids(self, text: str) -> list[int]:
    if self.generation.prompt_tokens == 'tokenizer':
      return self.tokenizer.encode(text, add_special_tokens=True)
    return self.bos + self.tokenizer.encode(text)

  def text(self, ids) -> str:
    """Decoded output tokens as the protocol turns them into text."""
    if self.generation.decode == 'skip_special':
      return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    return self.tokenizer.decode(sampler.strip_generation(ids, self.eos))

  def generate(self, prompts, cfg, seed=0, keep: int | None = None):
    """`keep` cuts each output to its first `keep` tokens (the decode length is whole blocks)."""
    return self.generate_ids([self.prompt_ids(p) for p in prompts], cfg, seed, keep)

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], cfg, seed=0,
                   keep: int | None = None):
    """As `generate`, for prompts already tokenized (e.g. truncated as token ids)."""
    out = []
    for start in range(0, len(prompt_ids), self.batch_size):
      ids = [list(p) for p in prompt_ids[start:start + self.batch_size]]
      n = len(ids)
      # Short final batches are filled with copies so every batch has one compiled shape.
      ids += [ids[0]] * (self.batch_size - n)
      width = bucket(max(len(i) for i in ids), self.pad_multiple)
      tokens = np.full((len(ids), width), self.model.cfg.pad_token_id, np.int32)
      mask = np.zeros((len(ids), width), bool)
      for row, seq in enumerate(ids):
        tokens[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = True
      key = jax.random.fold_in(jax.random.key(seed), start)
      with self.context():
        rows = np.asarray(sampler.generate(self.model, self.put(tokens), key, cfg,
                                           self.put(mask)))
      out += [self.text(r[width:width + (keep or len(r))]) for r in rows[:n]]
    return out


class ModelScorer:
  """Cross-entropy of the last W tokens of (noised) sequences sharing one prefix length: what
  both perplexity estimators need. Rows run `batch_size` at a time; prefixes are left-padded to a
  bucketed width (padding is its own segment 0, never attended to)."""

  def __init__(self, model, batch_size: int = 8, pad_multiple: int = 256,
               put: Callable = jnp.asarray, context: Callable = contextlib.nullcontext):
    self.model, self.batch_size, self.pad_multiple = model, batch_size, pad_multiple
    self.put, self.context = put, context
    self.mask_id, self.bos_id = model.cfg.mask_token_id, model.cfg.bos_token_id
    self.graphdef, self.state = nnx.split(model)

  def tail_cross_entropy(self, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """tokens [B, T] (the tail W positions possibly masked), targets [B, W] -> CE [B, W]."""
    b, t = tokens.shape
    width = bucket(t, self.pad_multiple)
    padded = np.full((b, width), self.model.cfg.pad_token_id, np.int32)
    padded[:, width - t:] = tokens
    segments = np.zeros((b, width), np.int32)
    segments[:, width - t:] = 1
    out = []
    for s in range(0, b, self.batch_size):
      sl = slice(s, s + self.batch_size)
      with self.context():
        out.append(np.asarray(_tail_cross_entropy(
            self.graphdef, self.state, self.put(padded[sl]), self.put(segments[sl]),
            self.put(np.asarray(targets[sl], np.int32)))))
    return np.concatenate(out)


def model_generator(config, ecfg: EvalConfig,
                    generation: protocols.Generation = LLADAX_GENERATION):
  """(generator, tokenizer, info) for the checkpoint the recipe names."""
  model, tok, info = load(config)
  model, put, context = place(model, config, ecfg)
  return ModelGenerator(model, tok, ecfg.batch_size, ecfg.pad_multiple, put, context,
                        generation), tok, info


def setup(config, ecfg: EvalConfig, generator: Generator | None = None,
          oracle: Callable[[], Generator] | None = None, protocol: str = 'lladax'):
  """(generator, model tokenizer, info): the checkpoint's model, or `generator` if one is passed,
  or the job's oracle with config.eval.oracle (then the tokenizer comes from config.tokenizer).
  `info` records the protocol, its generation settings and the recipe's deviations from them."""
  generation, deviations = protocols.generation(protocol, ecfg, config.get('model'))
  if config.get('sample') is not None:
    deviations += protocols.cache_deviations(sampler.from_config(config))
  record = {'protocol': protocol, 'generation': dataclasses.asdict(generation),
            'deviations': deviations}
  if deviations:
    logging.warning('protocol %s, with deviations: %s', protocol, '; '.join(deviations))
  if generator is None and ecfg.oracle and oracle is not None:
    generator = oracle()
  if generator is None:
    generator, tok, info = model_generator(config, ecfg, generation)
    return generator, tok, dict(info, **record)
  meta = checkpoint.read_config(config.checkpoint)[1] if config.get('checkpoint') else None
  info = (oracle_info(config) if ecfg.oracle else
          {'checkpoint': config.get('checkpoint') or 'custom generator', 'rope': None,
           'model': None})
  return generator, load_tokenizer(config, meta), dict(info, **record)


def sampler_settings(config, generation: protocols.Generation | None = None,
                     **decode) -> sampler.SamplerConfig:
  """config.sample's temperature, remasking, cfg and suppression with a job's decode lengths and
  the protocol's mask prediction."""
  base = sampler.from_config(config)
  if generation is not None:
    if base.mask_prediction != sampler.SamplerConfig.mask_prediction:
      raise ConfigError(f'config.sample.mask_prediction={base.mask_prediction!r} does not apply '
                        'to evaluation jobs; set config.eval.mask_prediction instead.')
    decode['mask_prediction'] = generation.mask_prediction
  return dataclasses.replace(base, **decode)


def note_deviations(info: dict, extra: Sequence[str], job: str) -> dict:
  """`info` with a job's own deviations from its protocol added to setup's, the new ones logged."""
  if extra:
    logging.warning('%s under protocol %s, with deviations: %s', job, info['protocol'],
                    '; '.join(extra))
  return dict(info, deviations=list(info['deviations']) + list(extra))


def prompt_ids(generator, tokenizer, generation: protocols.Generation, text: str) -> list[int]:
  """The prompt's token ids as the model receives them; for a generator other than the model
  (an oracle), the text's tokens with the tokenizer's own special tokens or none (an oracle has
  no model config to take a BOS from)."""
  if isinstance(generator, ModelGenerator):
    return generator.prompt_ids(text)
  return tokenizer.encode(text, add_special_tokens=generation.prompt_tokens == 'tokenizer')


def decode_settings(gen_length: int, block_length: int, steps: int | None,
                    where: str) -> dict:
  """gen_length rounded up to whole blocks and steps capped at it (per task, never mutating a
  shared setting as the papers' wrapper did); steps None = one token per step."""
  if gen_length <= 0 or block_length <= 0:
    raise ConfigError(f'{where}: the generation and block lengths must be positive.')
  gen = -(-gen_length // block_length) * block_length
  blocks = gen // block_length
  steps = min(steps or gen, gen)
  steps = max(blocks, steps // blocks * blocks)  # a whole number of steps per block
  return {'gen_length': gen, 'block_length': block_length, 'steps': steps}


# ---------------------------------------------------------------------------------------------
# Results: the resumable store of finished cells, outputs written whole


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
    if header is not None and header != self.settings:
      changed = sorted(k for k in set(header) | set(self.settings)
                       if header.get(k) != self.settings.get(k))
      raise ConfigError(f'{self.path} holds results made with other settings ({", ".join(changed)}'
                        '); delete it, set --config.eval.resume=False, or use another workdir.')

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
    # One write of one whole line, flushed to disk: a kill leaves at most a torn last line.
    self._file.write(json.dumps({'key': key, 'result': result}) + '\n')
    self._file.flush()
    os.fsync(self._file.fileno())
    self.results[canonical(key)] = result

  def close(self):
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


def output_paths(config, ecfg: EvalConfig, job: str) -> dict[str, str]:
  if not config.get('workdir'):
    raise ConfigError('config.workdir is empty; pass --config.workdir=DIR, where the results, '
                      'the resumable cells and the pictures go.')
  os.makedirs(config.workdir, exist_ok=True)
  prefix = os.path.join(config.workdir, ecfg.output_name or job)
  return {k: f'{prefix}{suffix}' for k, suffix in (
      ('cells', '_cells.jsonl'), ('json', '_results.json'), ('csv', '_results.csv'),
      ('png', '.png'))}


def write_json(path: str, value) -> None:
  files.write_json(path, _jsonable(value), indent=2, ensure_ascii=False)


def write_csv(path: str, rows: Iterable[dict]) -> None:
  import csv  # pylint: disable=import-outside-toplevel
  rows = list(rows)
  with files.replacing(path, newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)


def try_plot(fn: Callable, *args, **kwargs) -> str | None:
  """Draws with matplotlib when it is installed; the numbers are in the JSON either way."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    logging.warning('matplotlib is not installed, so no picture; pip install matplotlib.')
    return None
  return fn(*args, **kwargs)


def mean(values: Iterable[float]) -> float:
  values = list(values)
  return float(sum(values) / len(values)) if values else math.nan


def generation_of(info: dict) -> protocols.Generation:
  """The generation settings `setup` resolved and recorded in `info`."""
  return protocols.Generation(**info['generation'])
