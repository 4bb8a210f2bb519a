"""Needle in a haystack under lladax's own protocol (protocol='lladax'): the haystack and needle
placement, NeedleBench needle files, the job end to end with an oracle (100) and with a tiny
checkpoint (resumable, heatmap), and its recipe. The papers' protocol is in
test_eval_niah_protocol.py."""
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from lladax import jobs
from lladax.config import ConfigError
from lladax.data import tokenizers
from lladax.evals import haystack, niah
from tests.test_eval_common import recipe, tiny_checkpoint  # noqa: F401 (fixture)

BYTES = tokenizers.ByteTokenizer()


def word_tokenizer(tmp_path):
  """A whitespace word-level tokenizer.json: counting in it differs from the model's bytes."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {'[UNK]': 0}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path = str(tmp_path / 'words.json')
  tok.save(path)
  return path


def builder(tmp_path, counter=BYTES, **overrides):
  settings = dict(protocol='lladax', grid='custom', lengths=(400, 800),
                  depths=(0.0, 25.0, 50.0, 100.0), repeats=2, length_buffer=100)
  settings.update(overrides)
  cfg = niah.NiahConfig(**settings)
  return niah.Builder(cfg, niah.load_needles(cfg), haystack.generated_documents(0), counter), cfg


@pytest.mark.parametrize('depth', [0.0, 10.0, 50.0, 77.0, 100.0])
def test_needle_sits_at_its_token_depth_once_and_the_context_has_its_length(tmp_path, depth):
  b, cfg = builder(tmp_path)
  cell = b.cell(800, depth, repeat=1)
  needle = b.needles[cell['needle']]['needle']
  context = cell['context']
  assert context.count(needle) == 1 and cell['prompt'].count(needle) == 1
  n_hay = cell['haystack_tokens']
  before = len(BYTES.encode(context[:cell['needle_offset'] - len(cfg.separator)]))
  assert before == int(n_hay * depth / 100)
  # haystack + wrapped needle = length - buffer, exactly in bytes.
  assert len(BYTES.encode(context)) == 800 - cfg.length_buffer
  assert cell['prompt'].endswith(b.needles[cell['needle']]['stem'])


def test_lengths_counted_in_another_tokenizer(tmp_path):
  counter, where = haystack.counting_tokenizer(word_tokenizer(tmp_path), BYTES, 'x')
  assert where.endswith('words.json')
  b, cfg = builder(tmp_path, counter=counter)
  for depth in (0.0, 50.0, 100.0):
    cell = b.cell(400, depth, repeat=0)
    words = len(counter.encode(cell['context']))
    assert abs(words - (400 - cfg.length_buffer)) <= 2, words
    before = len(counter.encode(cell['context'][:cell['needle_offset']]))
    assert abs(before - int(cell['haystack_tokens'] * depth / 100)) <= 1
    assert len(BYTES.encode(cell['context'])) > 3 * words  # bytes are not what was counted
  with pytest.raises(ConfigError, match='does not exist'):
    haystack.counting_tokenizer('/nope/cl100k_base.tiktoken', BYTES, 'config.niah.count_tokenizer')


def test_sentence_alignment_moves_the_needle_back_to_a_sentence_end(tmp_path):
  b, cfg = builder(tmp_path, align_to='.')
  cell = b.cell(800, 50.0, 0)
  assert cell['context'][:cell['needle_offset'] - 1].endswith('.')


def test_needlebench_records_become_answer_stems(tmp_path):
  path = tmp_path / 'needles.jsonl'
  rows = [
      {'needle': 'The first band to play on Mars was the Dust Owls.', 'language': 'English',
       'retrieval_question': "Who was the first band to play on Mars? Please answer in the "
                             "format 'The first band to play on Mars was ____.'",
       'gold_standard_answer': 'the Dust Owls', 'arg2': 'Dust Owls'},
      {'needle': '火星上的第一支乐队是尘埃猫头鹰。', 'language': 'Chinese',
       'retrieval_question': '谁是第一支？', 'arg2': '尘埃猫头鹰'},
  ]
  path.write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in rows))
  needles = niah.load_needles(niah.NiahConfig(protocol='lladax', needles=str(path)))
  assert len(needles) == 1
  n = needles[0]
  assert n['question'] == 'Who was the first band to play on Mars?'
  assert n['stem'] == 'The first band to play on Mars was'
  assert n['keyword'] == 'Dust Owls' and n['answer'] == 'the Dust Owls.'


def test_grids_reproduce_the_papers():
  long = niah.NiahConfig()
  assert long.resolved('lengths') == (2000, 4000, 8000, 16000, 24000, 32000)
  assert long.resolved('steps') == 32 and long.resolved('repeats') == 10
  assert len(long.resolved('depths')) == 11
  ultra = niah.NiahConfig(grid='ultrallada')
  assert ultra.resolved('lengths')[0] == 8192 and ultra.resolved('lengths')[-1] == 131072
  assert len(ultra.resolved('lengths')) == 16 and ultra.resolved('steps') == 16
  with pytest.raises(ConfigError, match='needs config.niah.lengths'):
    niah.NiahConfig(grid='custom')
  with pytest.raises(ConfigError, match='lacks {stem}'):
    niah.NiahConfig(protocol='lladax', template='{context}')


def small(tmp_path, **niah_overrides):
  settings = dict(protocol='lladax', grid='custom', lengths=(300, 600),
                  depths=(0.0, 50.0, 100.0), repeats=2, length_buffer=100)
  settings.update(niah_overrides)
  return recipe('eval_niah', tmp_path, niah=settings)


def test_oracle_scores_100_through_the_whole_job(tmp_path):
  c = small(tmp_path)
  c.eval.oracle = True
  result = jobs.run(c)
  assert result['overall'] == 100 and result['overall_exact'] == 100
  assert result['grid']['score'] == [[100.0] * 3] * 2
  assert result['checkpoint'] == 'oracle'
  saved = json.loads((tmp_path / 'niah_results.json').read_text())
  assert saved['sampler']['steps'] == 32 and saved['counted_in'] == 'model'
  assert (tmp_path / 'niah_results.csv').read_text().count('\n') == 12 + 1


def test_an_oracle_that_ignores_the_needle_scores_low(tmp_path):
  from lladax.evals import oracles
  c = small(tmp_path)
  result = niah.run(c, generator=oracles.Oracle(lambda p: ' nothing useful'))
  assert result['overall'] < 20 and result['overall_exact'] == 0


def test_tiny_checkpoint_job_resumes_and_draws_the_heatmap(tmp_path, tiny_checkpoint,
                                                          monkeypatch):
  from lladax.evals import model_calls
  c = small(tmp_path)
  c.checkpoint = tiny_checkpoint
  c.eval.batch_size = 3
  real = model_calls.ModelGenerator.generate
  calls = []

  class Killed(Exception):
    pass

  def counted(self, prompts, cfg, seed=0, keep=None):
    calls.append(len(prompts))
    if len(calls) == 2 and kill:
      raise Killed
    return real(self, prompts, cfg, seed, keep)

  monkeypatch.setattr(model_calls.ModelGenerator, 'generate', counted)
  kill = True
  with pytest.raises(Killed):
    jobs.run(c)
  finished = (tmp_path / 'niah_cells.jsonl').read_text().splitlines()
  assert len(finished) == 1 + 3  # the settings line and the first batch
  calls.clear()
  kill = False
  result = jobs.run(c)
  assert sum(calls) == 12 - 3  # only the unfinished cells are computed
  assert len(result['cells']) == 12
  assert all(0 <= r['score'] <= 100 for r in result['cells'])
  assert result['rope']['base'] == 10000.0 and result['model']['dtype'] == 'float32'
  assert result['sampler'] == dict(result['sampler'], gen_length=32, block_length=32, steps=32)
  if result['png']:
    assert os.path.getsize(tmp_path / 'niah.png') > 1000


def test_command_line_runs_the_recipe_with_an_oracle(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, '-m', 'lladax.main', '--config', 'configs/eval_niah.py',
       f'--config.workdir={tmp_path}', '--config.eval.oracle=True', '--config.tokenizer.kind=bytes',
       '--config.niah.protocol=lladax', '--config.niah.grid=custom',
       '--config.niah.lengths=(700,)', '--config.niah.repeats=1',
       '--config.niah.depths=(0.0,100.0)'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'NIAH overall 100.00' in proc.stdout
  assert (tmp_path / 'niah_results.json').exists()


def test_a_bad_niah_setting_is_one_sentence(tmp_path):
  c = small(tmp_path, grid='sideways')
  with pytest.raises(ConfigError, match="config.niah.grid='sideways' is not one of"):
    jobs.run(c)


def test_a_local_tiktoken_file_counts_without_downloading(tmp_path):
  pytest.importorskip('tiktoken')
  import base64
  ranks = [bytes([b]) for b in range(256)] + [b'ab', b'abab', b' c']
  path = tmp_path / 'cl100k_base.tiktoken'
  path.write_text(''.join(f'{base64.b64encode(t).decode()} {i}\n' for i, t in enumerate(ranks)))
  counter, _ = haystack.counting_tokenizer(str(path), BYTES, 'config.niah.count_tokenizer')
  assert counter.encode('abab c') == [257, 258]
  assert haystack.token_starts(counter, 'abab c') == [0, 4]


def test_a_tiktoken_file_replaced_at_its_path_is_read_again(tmp_path):
  """tiktoken's own loader caches every path it reads under /tmp by its name; lladax reads the
  file itself, so a file replaced at the same path counts with its new ranks."""
  pytest.importorskip('tiktoken')
  import base64

  def write(extra):
    ranks = [bytes([b]) for b in range(256)] + extra
    path.write_text(''.join(f'{base64.b64encode(t).decode()} {i}\n' for i, t in enumerate(ranks)))

  path = tmp_path / 'cl100k_base.tiktoken'
  write([b'ab'])
  assert haystack.TiktokenTokenizer(str(path)).encode('abab') == [256, 256]
  write([b'ba'])
  assert haystack.TiktokenTokenizer(str(path)).encode('abab') == [97, 256, 98]


def test_the_papers_length_file_is_checked_against_cl100k(tmp_path):
  pytest.importorskip('tiktoken')
  import base64
  path = tmp_path / 'cl100k_base.tiktoken'
  path.write_text(''.join(f'{base64.b64encode(bytes([b])).decode()} {b}\n' for b in range(256)))
  _, deviations = haystack.cl100k(str(path), 'config.x.count_tokenizer')
  assert len(deviations) == 1 and 'is not cl100k_base.tiktoken (sha256 ' in deviations[0]
  path.write_text('not a rank line\n')
  with pytest.raises(ConfigError, match='line 1 is not "<base64 token> <rank>"'):
    haystack.cl100k(str(path), 'config.x.count_tokenizer')
  with pytest.raises(ConfigError, match='config.x.count_tokenizer is empty'):
    haystack.cl100k('', 'config.x.count_tokenizer')


def test_records_and_needles_that_are_not_utf8_json_are_one_sentence(tmp_path):
  path = tmp_path / 'hay.jsonl'
  path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
  with pytest.raises(ConfigError, match='hay.jsonl line 2 is not UTF-8 text'):
    haystack.read_records(str(path), 'config.niah.haystack')
  needles = tmp_path / 'needles.jsonl'
  needles.write_text('{"needle": "A.", "stem": "A", "keyword": "A"}\n{"needle": \n')
  cfg = niah.NiahConfig(protocol='lladax', needles=str(needles))
  with pytest.raises(ConfigError, match='needles.jsonl line 2 is not a UTF-8 JSON record'):
    niah.load_needles(cfg)
