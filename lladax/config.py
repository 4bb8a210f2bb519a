"""Turning ml_collections ConfigDicts into typed, validated settings.

SECTIONS names the dataclass of every recipe section (`config.model`, `config.rope`, ...); `parse`
turns a recipe into a Recipe holding each of its sections as that frozen dataclass when a job
starts, so library code receives plain values and a typo in a recipe fails at start-up, not
mid-run.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import numbers
import typing
from typing import Any, Mapping

# Every recipe section: name -> 'module:Class' of the dataclass that reads it (imported when asked
# for, so that this module, which everything imports, imports nothing of lladax). presets builds
# recipes from it and `parse` builds every section a recipe holds when a job starts.
SECTIONS = {
    'model': 'lladax.model_config:ModelConfig',
    'rope': 'lladax.model_config:RopeConfig',
    'tokenizer': 'lladax.data.tokenizers:TokenizerConfig',
    'data': 'lladax.data.config:DataConfig',
    'pipeline': 'lladax.data.pipeline:PipelineConfig',
    'eval_pipeline': 'lladax.data.pipeline:PipelineConfig',   # held-out batches for validation
    'optim': 'lladax.train.optimizer:OptimConfig',
    'train': 'lladax.train.job:TrainConfig',
    'step': 'lladax.train.step:StepConfig',
    'mesh': 'lladax.sharding:MeshConfig',
    'sample': 'lladax.sampler:SamplerConfig',
    'plan': 'lladax.plan:PlanConfig',
    'replay': 'lladax.replay.settings:ReplayConfig',
    'eval': 'lladax.evals.eval_settings:EvalConfig',
    'niah': 'lladax.evals.niah:NiahConfig',
    'ruler': 'lladax.evals.ruler:RulerConfig',
    'ppl': 'lladax.evals.perplexity:PplConfig',
    'longbench': 'lladax.evals.longbench:LongBenchConfig',
    'convert': 'lladax.hf.convert:ConvertConfig',
    'export': 'lladax.hf.export:ExportConfig',
}
# Sections whose meaning depends on the job.
JOB_SECTIONS = {
    'attention_bench': {'bench': 'lladax.attention.bench:BenchConfig'},
    'data_bench': {'bench': 'lladax.data.bench:BenchConfig'},
}
# Keys of a section that are a job's input rather than settings of its dataclass.
SECTION_INPUTS = {'sample': ('prompt',)}


class ConfigError(ValueError):
  """A setting a user can fix. The message names the setting and the fix in one sentence."""


def _plain(section: Any) -> dict:
  if section is None:
    return {}
  if hasattr(section, 'to_dict'):
    return section.to_dict()
  if dataclasses.is_dataclass(section):
    return dataclasses.asdict(section)
  if isinstance(section, Mapping):
    return dict(section)
  raise ConfigError(f'expected a mapping of settings, got {type(section).__name__}')


def _coerce(value: Any, annotation: Any, where: str) -> Any:
  """Checks `value` against a simple annotation; ints are accepted where floats are expected."""
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if annotation is Any:
    return value
  if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, where)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(errors[0] if errors else f'{where} has an invalid value {value!r}')
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f'{where} must be a list or tuple, got {value!r}')
    inner = args[0] if args else Any
    return tuple(_coerce(v, inner, f'{where}[{i}]') for i, v in enumerate(value))
  # numbers.* so that NumPy scalars count as the numbers they are.
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ConfigError(f'{where} must be a number, got {value!r}')
    return value if type(value) is float else float(value)
  if annotation is int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
      raise ConfigError(f'{where} must be an integer, got {value!r}')
    return value if type(value) is int else int(value)
  if annotation is bool:
    if not isinstance(value, bool):
      raise ConfigError(f'{where} must be True or False, got {value!r}')
    return value
  if annotation is str:
    if not isinstance(value, str):
      raise ConfigError(f'{where} must be a string, got {value!r}')
    return value
  return value


@functools.cache
def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def check_types(obj, where: str) -> None:
  """Refuses fields of dataclass `obj` whose values do not match their annotations, and stores
  the accepted conversions (int to float, list to tuple); call it first in __post_init__, so that
  a settings file written by hand ("n_heads": "4") fails as one sentence naming the field."""
  hints = _hints(type(obj))
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    coerced = _coerce(value, hints[f.name], f'{where}.{f.name}')
    if coerced is not value:
      object.__setattr__(obj, f.name, coerced)  # frozen dataclasses too


def from_section(cls, section: Any, where: str):
  """Builds dataclass `cls` from a config section, refusing unknown keys and ill-typed values.

  `where` is the section's path in the recipe (e.g. 'config.model') so errors point at it.
  """
  values = _plain(section)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(
        f'{where}.{unknown[0]} is not a known setting; known settings are: '
        f'{", ".join(sorted(fields))}.')
  hints = _hints(cls)
  kwargs = {}
  for name, value in values.items():
    kwargs[name] = _coerce(value, hints[name], f'{where}.{name}')
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ConfigError(f'{where} is incomplete: {e}') from None


def section_class(name: str, job: str | None = None):
  """The dataclass that reads recipe section `name` (for `job`), or None for no known section."""
  path = JOB_SECTIONS.get(job, {}).get(name) or SECTIONS.get(name)
  if path is None:
    return None
  module, cls = path.split(':')
  return getattr(importlib.import_module(module), cls)


def section_hint(name: str, job: str | None = None) -> str:
  """What a recipe passes to presets.section to add section `name` ('sharding.MeshConfig', with
  `from lladax import sharding`)."""
  path = JOB_SECTIONS.get(job, {}).get(name) or SECTIONS[name]
  return path.replace(':', '.').removeprefix('lladax.')


def typed_section(config, name: str):
  """Recipe section `name` of `config` as its dataclass (defaults when the recipe lacks it)."""
  cls = section_class(name, config.get('job'))
  inputs = SECTION_INPUTS.get(name, ())
  section = {k: v for k, v in _plain(config.get(name)).items() if k not in inputs}
  return from_section(cls, section, f'config.{name}')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A recipe parsed once, at the start of a job: its top-level values, and every section it
  holds as the dataclass of config.SECTIONS (a section it lacks reads as that dataclass's
  defaults). Library code receives these typed values; `raw`, the ConfigDict itself, is only
  for code that hands the recipe on (a user's mesh hook, the replay's stage recipes)."""
  job: str
  seed: int
  workdir: str
  checkpoint: str
  sections: Mapping[str, Any]
  raw: Any = dataclasses.field(repr=False, compare=False)

  def __getattr__(self, name: str):
    if name.startswith('__') or section_class(name, self.job) is None:
      raise AttributeError(name)
    found = self.sections.get(name)
    return found if found is not None else typed_section({'job': self.job}, name)

  def checkpoint_for(self, what: str) -> str:
    """config.checkpoint, or a ConfigError saying which model folder the job needs (`what`)."""
    if not self.checkpoint:
      raise ConfigError(f'config.checkpoint is empty; pass --config.checkpoint=DIR, {what}.')
    return self.checkpoint

  def has(self, name: str) -> bool:
    """Whether the recipe holds section `name` (rather than reading as its defaults)."""
    return name in self.sections

  def input(self, path: str, default=None):
    """A job input that is no setting of a section ('sample.prompt', 'demo_eval_examples')."""
    node = self.raw
    for key in path.split('.'):
      if node is None or not hasattr(node, 'keys') or key not in node:
        return default
      node = node[key]
    return node


def parse(config) -> Recipe:
  """The recipe `config` as typed values: every section it holds is built now, so a bad setting
  fails at start-up whichever job runs. A Recipe is returned as it is."""
  if isinstance(config, Recipe):
    return config
  job = config.get('job')
  sections = {name: typed_section(config, name) for name in config.keys()
              if section_class(name, job) is not None}
  return Recipe(job=job, seed=_coerce(config.get('seed', 0), int, 'config.seed'),
                workdir=_coerce(config.get('workdir') or '', str, 'config.workdir'),
                checkpoint=_coerce(config.get('checkpoint') or '', str, 'config.checkpoint'),
                sections=sections, raw=config)


def refuse_other_settings(recorded: Mapping, now: Mapping, holder: str, fix: str,
                          prefix: str = '') -> None:
  """ConfigError when `holder` (a results file, a stage folder, a checkpoint) was made with other
  settings than this run's: resuming would mix the two. Names every setting that changed (as
  `prefix` + key) and `fix`, what the user can do."""
  changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
  if changed:
    first = changed[0]
    names = ', '.join(prefix + k for k in changed)
    raise ConfigError(f'{holder} holds a run with other settings ({names}; {prefix}{first} was '
                      f'{recorded.get(first)!r}, now {now.get(first)!r}); {fix}')


def choice(value: str, options, where: str) -> str:
  if value not in options:
    raise ConfigError(f'{where}={value!r} is not one of {", ".join(map(repr, options))}.')
  return value


def _is_section(node) -> bool:
  return hasattr(node, 'keys') and not isinstance(node, str)


def _unknown(where: str, key: str, node, recipe: str, path: str,
             hints: Mapping[str, str]) -> ConfigError:
  """The sentence for `key`, which section `where` of recipe `recipe` does not have."""
  if where == 'config' and key in hints:
    return ConfigError(f'{recipe} has no config.{key} section, so --config.{path} has nothing '
                       f'to set; add c.{key} = presets.section({hints[key]}) to the recipe.')
  close = difflib.get_close_matches(key, list(node.keys()), n=1)
  if close:
    return ConfigError(f'{where}.{key} is not a setting of {recipe}; did you mean '
                       f'{where}.{close[0]}?')
  return ConfigError(f'{where}.{key} is not a setting of {recipe}; {where} has '
                     f'{", ".join(sorted(node.keys()))}.')


def check_override(config, path: str, recipe: str,
                   section_hints: Mapping[str, str] | None = None) -> None:
  """ConfigError when `--config.<path>` names no setting of `config`, the recipe `recipe`.

  section_hints: top-level section name -> the dataclass a recipe builds it from
  ('sharding.MeshConfig'), so a section the recipe lacks is named with how to add it.
  """
  node, where = config, 'config'
  for key in path.split('.'):
    if not _is_section(node):
      raise ConfigError(f'{where} is a setting, not a section, so --config.{path} cannot be set; '
                        f'set --config.{where[len("config."):]} itself.')
    if key not in node:
      raise _unknown(where, key, node, recipe, path, section_hints or {})
    node, where = node[key], f'{where}.{key}'
