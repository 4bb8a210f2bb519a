"""Records what the papers' official code produces, as the test data the golden tests compare to.

    git clone https://github.com/open-compass/opencompass /src/opencompass
    git -C /src/opencompass checkout 0.4.2
    git clone https://github.com/OpenMOSS/LongLLaDA /src/LongLLaDA
    git clone https://github.com/Relaxed-System-Lab/UltraLLaDA /src/UltraLLaDA
    git clone https://github.com/ML-GSAI/LLaDA /src/LLaDA
    pip install -e '.[test]' python-Levenshtein scipy requests pandas
    # (.[test]: tiktoken, wonderwords 2.2.0, rouge, jieba, fuzzywuzzy, torch, lm-eval; the other
    # four are imported by the official code only: fuzzywuzzy's back end OpenCompass installs,
    # RULER's fwe / qa files, NeedleBench's summarizer)
    python tests/golden/record.py --opencompass /src/opencompass --longllada /src/LongLLaDA \\
        --ultrallada /src/UltraLLaDA --llada /src/LLaDA [--only niah,ruler,longbench,sampler]

Each benchmark's recorder (tests/golden/<bench>_record.py) writes its inputs with the generators
the tests use (tests/golden/*_inputs.py: haystacks, needles, essays, LongBench records, the BPE of
bpe.py), runs the official code on them (official.py executes the fetched files; nothing of them
is copied into this repository) and writes tests/golden/data/<bench>.json: the exact prompt
strings, answers and scores. Rerun it after changing an input generator; the tests then compare
lladax against the new file. The recorded files name the source commits they came from.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, 'data')
BENCHES = ('niah', 'ruler', 'longbench', 'sampler')


def source_commit(root: str) -> str:
  """The checked-out commit (and tag, if any) of a fetched tree, recorded beside the goldens."""
  try:
    out = subprocess.run(['git', '-C', root, 'describe', '--always', '--tags'],
                         capture_output=True, text=True, check=True).stdout.strip()
    sha = subprocess.run(['git', '-C', root, 'rev-parse', 'HEAD'], capture_output=True,
                         text=True, check=True).stdout.strip()
    return f'{out} ({sha})'
  except (OSError, subprocess.CalledProcessError):
    # An unpacked snapshot, not a checkout: its commit may be written beside it.
    marker = os.path.join(root, '.fetched_commit')
    if os.path.exists(marker):
      with open(marker, encoding='utf-8') as f:
        return f.read().strip()
    return 'unknown (not a git checkout)'


def load(bench: str) -> dict:
  """The recorded golden data of `bench`, as the tests read it."""
  with open(os.path.join(DATA, f'{bench}.json'), encoding='utf-8') as f:
    return json.load(f)


def write(bench: str, payload: dict) -> str:
  os.makedirs(DATA, exist_ok=True)
  path = os.path.join(DATA, f'{bench}.json')
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(payload, f, indent=1, ensure_ascii=False)
    f.write('\n')
  os.replace(tmp, path)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--opencompass', required=True, help='open-compass/opencompass at tag 0.4.2')
  parser.add_argument('--longllada', required=True, help='OpenMOSS/LongLLaDA')
  parser.add_argument('--ultrallada', required=True, help='Relaxed-System-Lab/UltraLLaDA')
  parser.add_argument('--llada', required=True, help='ML-GSAI/LLaDA')
  parser.add_argument('--only', default=','.join(BENCHES), help='comma-separated benchmarks')
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(HERE))              # tests/, for `golden.*`
  sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the checkout, for `lladax`
  sources = {name: {'path': os.path.abspath(getattr(args, name)),
                    'commit': source_commit(getattr(args, name))}
             for name in ('opencompass', 'longllada', 'ultrallada', 'llada')}
  for bench in args.only.split(','):
    if bench not in BENCHES:
      parser.error(f'--only has {bench!r}; choose from {", ".join(BENCHES)}')
    recorder = importlib.import_module(f'golden.{bench}_record')
    with tempfile.TemporaryDirectory() as work:
      payload = recorder.record(sources, work)
    payload = dict(sources={k: v['commit'] for k, v in sources.items()}, **payload)
    print(f'{bench}: wrote {write(bench, payload)}')


if __name__ == '__main__':
  main()
