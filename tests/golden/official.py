"""Runs files of the papers' official code from a fetched copy, without installing OpenCompass.

The official dataset builders, prompt templates and evaluators are plain Python around OpenCompass'
registries, HF `datasets` containers and mmengine configs. `Official(root)` executes chosen files
of the fetched tree under their own module names, with only that plumbing stood in for:

- every `opencompass.*` module that is not loaded from its file is a stub whose attributes are
  classes (so `class X(BaseDataset)` works) and whose registries' `register_module` returns the
  function unchanged; `opencompass.utils.get_data_path` returns its path;
- `datasets.Dataset.from_dict` / `from_list` return plain column dicts / row lists, and
  `datasets.load_dataset('json', data_files=...)` reads local JSON lines;
- `transformers.AutoTokenizer` and `mmengine` are stubs (the papers count lengths in tiktoken);
- `tiktoken.encoding_for_model('gpt-4')` and `tiktoken.get_encoding('cl100k_base')` return the
  encoding the caller gives (the test BPE of bpe.py in place of the 1.7 MB cl100k file).

Everything that decides a prompt, a random draw or a score is the official code itself. The stubs
live in sys.modules only inside `with Official(...) as oc:`.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from unittest import mock

STUBBED = ('opencompass', 'datasets', 'transformers', 'mmengine')


def _identity_decorator(*args, **kwargs):
  if len(args) == 1 and callable(args[0]) and not kwargs:
    return args[0]
  return lambda fn: fn


class _StubMeta(type):
  """A class whose every missing attribute is a decorator factory (register_module, ...)."""

  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _identity_decorator


def _stub_class(name: str):
  return _StubMeta(name, (), {'__init__': lambda self, *a, **k: None})


class _StubModule(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    value = _stub_class(name)
    setattr(self, name, value)
    return value


class _Dataset:
  """`datasets.Dataset` reduced to what dataset builders return: their columns."""

  @staticmethod
  def from_dict(columns):
    return dict(columns)

  @staticmethod
  def from_list(rows):
    return list(rows)


def _load_dataset(kind, data_files=None, split=None, **_):
  if kind != 'json':
    raise NotImplementedError(f'the golden recorder reads local json only, not {kind!r}')
  files = data_files if isinstance(data_files, (list, tuple)) else [data_files]
  if isinstance(data_files, dict):
    files = list(data_files.values())
  rows = []
  for path in files:
    with open(path, encoding='utf-8') as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows if split else {'train': rows}


class _Finder:
  """Creates stub modules for the stubbed packages on import."""

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.split('.')[0] in STUBBED and name not in sys.modules:
      return importlib.util.spec_from_loader(name, self)
    return None

  def create_module(self, spec):
    module = _StubModule(spec.name)
    module.__path__ = []  # a package, so submodules import
    return module

  def exec_module(self, module):
    if module.__name__ == 'datasets':
      module.Dataset = _Dataset
      module.DatasetDict = dict
      module.load_dataset = _load_dataset
    if module.__name__ == 'opencompass.utils':
      module.get_data_path = lambda path, local_mode=False: path


class Official:
  """`with Official(root, encoding) as oc: mod = oc.load('opencompass/datasets/x.py', 'name')`."""

  def __init__(self, root: str, encoding=None):
    self.root, self.encoding = root, encoding
    self._saved: dict = {}
    self._patches: list = []
    self._finder = _Finder()

  def __enter__(self):
    self._saved = {k: v for k, v in sys.modules.items() if k.split('.')[0] in STUBBED}
    for k in self._saved:
      del sys.modules[k]
    sys.meta_path.insert(0, self._finder)
    if self.encoding is not None:
      import tiktoken  # pylint: disable=import-outside-toplevel
      enc = self.encoding

      def by_model(model_name):
        assert model_name == 'gpt-4', model_name
        return enc

      def by_name(name):
        assert name == 'cl100k_base', name
        return enc

      self._patches = [mock.patch.object(tiktoken, 'encoding_for_model', by_model),
                       mock.patch.object(tiktoken, 'get_encoding', by_name)]
      for p in self._patches:
        p.start()
    return self

  def __exit__(self, *exc):
    for p in self._patches:
      p.stop()
    sys.meta_path.remove(self._finder)
    for k in [k for k in sys.modules if k.split('.')[0] in STUBBED]:
      del sys.modules[k]
    sys.modules.update(self._saved)
    return False

  def load(self, relpath: str, module_name: str):
    """Executes the official file `root/relpath` as module `module_name` (its package's stubs
    are created first, so its relative imports resolve)."""
    path = f'{self.root.rstrip("/")}/{relpath}'
    parent = module_name.rpartition('.')[0]
    if parent:
      importlib.import_module(parent)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if parent:
      setattr(sys.modules[parent], module_name.rpartition('.')[2], module)
    return module


def prompt_builder(oc: Official):
  """fn(template, entry, output_column) -> the string OpenCompass' GenInferencer hands a model
  without a meta template (LLaDA's wrapper has none): the real PromptTemplate.generate_item, with
  the output column replaced by '', flattened by the real LMTemplateParser."""
  oc.load('opencompass/utils/types.py', 'opencompass.utils.types')
  oc.load('opencompass/utils/prompt.py', 'opencompass.utils.prompt')
  template_mod = oc.load('opencompass/openicl/icl_prompt_template.py',
                         'opencompass.openicl.icl_prompt_template')
  base = oc.load('opencompass/models/base.py', 'opencompass.models.base')
  parser = base.LMTemplateParser(None)

  def build(template, entry: dict, output_column: str) -> str:
    item = template_mod.PromptTemplate(template).generate_item(
        entry, output_field=output_column, output_field_replace_token='')
    return parser.parse_template(item, mode='gen')

  return build
