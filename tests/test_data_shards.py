"""config.pipeline.shards: the global batch drawn from a fixed number of document streams is the
same however many processes read them, and a data state saved by one topology resumes on another.
Processes are simulated by their (index, count) here; tests/test_multihost.py runs real ones."""
import json

import numpy as np
import pytest

from lladax.config import ConfigError
from lladax.data import shards, tokenizers
from lladax.data.pipeline import PipelineConfig

TOK = tokenizers.ByteTokenizer()


@pytest.fixture
def cfg(tmp_path):
  path = tmp_path / 'd.jsonl'
  rng = np.random.default_rng(0)
  path.write_text(''.join(json.dumps({'text': 'x' * int(n)}) + '\n'
                          for n in rng.integers(3, 40, 60)))
  return PipelineConfig(sources=(f'jsonl:{path}',), seq_len=16, shards=4, read_threads=1)


def opened(cfg, index, count, rows=8):
  return shards.open_streams(cfg, TOK, rows=rows // count, index=index, count=count,
                             eos_id=TOK.EOS)


def global_batches(readers, n):
  return [np.concatenate([next(r)['tokens'] for r in readers]) for _ in range(n)]


def test_the_batches_do_not_depend_on_the_number_of_processes(cfg):
  for count in (1, 2, 4):
    readers = [opened(cfg, i, count) for i in range(count)]
    got = global_batches(readers, 5)
    if count == 1:
      want = got
    np.testing.assert_array_equal(np.stack(got), np.stack(want), err_msg=f'{count} processes')
  # shards=0 is one stream per process: another number of processes reads other rows.
  plain = PipelineConfig(**{**cfg.__dict__, 'shards': 0})
  assert not np.array_equal(global_batches([opened(plain, 0, 1)], 1)[0], want[0])


def test_a_state_saved_on_one_process_resumes_on_two(cfg):
  one = opened(cfg, 0, 1)
  global_batches([one], 3)
  state = shards.gathered_state(one.get_state())
  assert sorted(state['shards']) == ['0', '1', '2', '3']
  rest = global_batches([one], 2)
  two = [opened(cfg, i, 2) for i in range(2)]
  for reader in two:
    reader.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.stack(global_batches(two, 2)), np.stack(rest))


def test_streams_that_do_not_fit_are_one_sentence(cfg):
  with pytest.raises(ConfigError, match=r'shards=4 does not split over the 3 process blocks'):
    opened(cfg, 0, 3, rows=9)
  with pytest.raises(ConfigError, match='make config.data.batch_size a multiple of 4'):
    opened(cfg, 0, 1, rows=6)
  plain = PipelineConfig(**{**cfg.__dict__, 'shards': 0})
  saved = opened(plain, 0, 1).get_state()
  with pytest.raises(ConfigError, match='not stream 1 of 2 that this process reads'):
    opened(plain, 1, 2).set_state(saved)
