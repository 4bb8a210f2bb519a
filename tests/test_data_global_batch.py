"""Global batches on a mesh: two simulated hosts of 4 CPU devices each (8 devices), in subprocesses.

JAX must see its device count before it is first imported, and other test modules import it, so
each host is a fresh Python process joined by jax.distributed on localhost.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    pid, port, data = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2, process_id=pid)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, PartitionSpec as P
    from lladax.config import ConfigError
    from lladax.data import global_batch as gb, pipeline, tokenizers
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    devices = np.array(jax.devices())
    tok = tokenizers.ByteTokenizer()

    def rows(index, count, batch_size=4):
      cfg = pipeline.PipelineConfig(sources=(f'jsonl:{data}',), seq_len=16, batch_size=batch_size,
                                    num_epochs=1)
      return next(pipeline.build(cfg, tok, eos_id=tok.EOS, process_index=index,
                                 process_count=count))

    def check_shards(arrays, local, first_row):
      for key, a in arrays.items():
        assert a.dtype == local[key].dtype, key
        for shard in a.addressable_shards:
          r, c = shard.index
          want = local[key][r.start - first_row:r.stop - first_row, c]
          np.testing.assert_array_equal(np.asarray(shard.data), want, err_msg=key)

    # Rows over data x fsdp (split across the hosts), tokens over context (within a host).
    mesh = Mesh(devices.reshape(2, 2, 2), ('data', 'fsdp', 'context'))
    spec = gb.batch_spec(mesh)
    assert spec == P(('data', 'fsdp'), 'context'), spec
    assert gb.data_shard(mesh) == (pid, 2)
    local = rows(*gb.data_shard(mesh))
    arrays = gb.global_batch(local, mesh)
    assert arrays['tokens'].shape == (8, 16) and arrays['tokens'].sharding.spec == spec
    check_shards(arrays, local, 4 * pid)
    full = multihost_utils.process_allgather(arrays['tokens'], tiled=True)
    np.testing.assert_array_equal(full[4 * pid:4 * pid + 4], local['tokens'])
    assert not np.array_equal(full[:4], full[4:]), 'both hosts fed the same rows'

    # The context axis spans the hosts: both hold all rows, so both must read the same shard.
    mesh = Mesh(devices.reshape(4, 2).T, ('data', 'context'))
    assert gb.data_shard(mesh) == (0, 1)
    local = rows(*gb.data_shard(mesh))
    arrays = gb.global_batch(local, mesh)
    assert arrays['segment_ids'].shape == (4, 16)
    check_shards(arrays, local, 0)

    try:
      gb.global_batch(rows(pid, 2, batch_size=3), Mesh(devices.reshape(2, 2, 2),
                                                       ('data', 'fsdp', 'context')))
      raise AssertionError('3 rows over 2 shards should fail')
    except ConfigError as e:
      assert 'batch_size a multiple of 2' in str(e), e
    print('OK', pid)
''')


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_global_batch_on_two_simulated_hosts(tmp_path):
  data = tmp_path / 'd.jsonl'
  data.write_text(''.join(json.dumps({'text': f'document {i} ' * (i + 1)}) + '\n'
                          for i in range(40)))
  script = tmp_path / 'worker.py'
  script.write_text(WORKER)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f'OK {i}' in out, out[-3000:]
