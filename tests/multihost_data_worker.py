"""One process of tests/test_multihost.py's data check, started by lladax.launch_local: opens the
training batches of configs/multihost_tiny.py the way the train job does (its mesh, the process's
block of the batch, config.pipeline.shards streams), reads one epoch and checks with the other
processes that every document was read by exactly one of them.

  python -m lladax.launch_local -n 2 -d 4 --script tests/multihost_data_worker.py CORPUS DOCS
"""
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lladax import main as main_lib, model_config, multihost, sharding  # noqa: E402
from lladax.config import parse  # noqa: E402
from lladax.data import global_batch, tokenizers  # noqa: E402
from lladax.train import batches as train_data, state as train_state  # noqa: E402


def documents_read(corpus: str) -> list[int]:
  spec = importlib.util.spec_from_file_location(
      'recipe', os.path.join(ROOT, 'configs', 'multihost_tiny.py'))
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  config = recipe.get_config()
  config.pipeline.update(sources=(f'jsonl:{corpus}',), num_epochs=1, fit='first_fit')
  parsed = parse(config)
  mcfg = model_config.resolve_rope(parsed.model, parsed.rope)
  dcfg, mesh_cfg = parsed.data, parsed.mesh
  mesh = sharding.make_mesh(mesh_cfg)
  spec = train_state.batch_sharding(mesh, (dcfg.batch_size, dcfg.seq_len), mesh_cfg.rules).spec
  index, count = global_batch.data_shard(mesh, spec)
  tok = tokenizers.load(parsed.tokenizer, None)
  data = train_data.open_batches(parsed, dcfg, tok, mcfg, rows=dcfg.batch_size // count,
                                 process_index=index, process_count=count)
  seen = []
  while True:
    try:
      batch = next(data)
    except StopIteration:
      break
    text = bytes(t for t in batch['tokens'].ravel().tolist() if t < 256).decode('utf-8', 'replace')
    seen += [int(n) for n in re.findall(r'<doc (\d+)>', text)]
  data.close()
  return seen


def main():
  corpus, total = sys.argv[1], int(sys.argv[2])
  main_lib._join_other_processes()  # pylint: disable=protected-access
  everyone = multihost.gather_json(documents_read(corpus))
  counts = [len(s) for s in everyone]
  union = sorted(d for s in everyone for d in s)
  assert union == list(range(total)), (counts, union[:20])
  print(f'OK documents per process {counts}', flush=True)


if __name__ == '__main__':
  main()
