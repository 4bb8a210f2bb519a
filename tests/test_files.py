"""Whole-file writes (lladax/files.py): the old file or the new one, never half, nothing else
touched."""
import json
import os

import pytest

from lladax import files


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
  path = tmp_path / 'results.json'
  users = tmp_path / 'results.json.tmp'   # a file of the user's with the old temporary name
  users.write_text('mine')
  files.write_json(str(path), {'a': 1})
  files.write_json(str(path), {'a': 2}, indent=1)
  assert json.loads(path.read_text()) == {'a': 2}
  assert users.read_text() == 'mine'
  assert sorted(os.listdir(tmp_path)) == ['results.json', 'results.json.tmp']


def test_a_failed_write_keeps_the_old_file_and_removes_its_own(tmp_path):
  path = tmp_path / 'cells.jsonl'
  path.write_text('old\n')
  with pytest.raises(RuntimeError):
    with files.replacing(str(path)) as f:
      f.write('half of the new')
      raise RuntimeError('killed')
  assert path.read_text() == 'old\n' and os.listdir(tmp_path) == ['cells.jsonl']
  with files.replacing(str(tmp_path / 'new' / 'picture.png'), binary=True) as f:
    f.write(b'\x89PNG')
  assert (tmp_path / 'new' / 'picture.png').read_bytes() == b'\x89PNG'
