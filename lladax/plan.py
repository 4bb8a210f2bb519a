"""Ahead-of-time plan for training on a TPU topology, from a CPU host with libtpu.

  python -m lladax.main --config configs/ultra128k.py --config.job=plan \\
      --config.plan.topology=v5p:4x4x4

Compiles the real sharded training step (and the evaluation forward) for the topology without
any TPU attached, then reports per chip: memory from the compiler (arguments, temporaries,
outputs) against HBM, the step's FLOPs, the roofline step time and the MFU ceiling. A program
that does not fit fails inside the compiler (RESOURCE_EXHAUSTED); the plan says which knob to
turn. `config.plan.meshes` and `config.plan.remat_policies` sweep alternatives and the best
that fits is reported.

An evaluation recipe (configs/eval_*.py) is planned as its job runs instead: the sampler or
the perplexity scorer at the recipe's longest input, on one chip (lladax/eval_calls.py).

FLOPs are analytic (lladax/flops.py): cost_analysis() counts a scanned layer once and sees
nothing inside Pallas kernels. The roofline is a lower bound on step time: compute at peak
bf16 FLOP/s, and ICI traffic (FSDP gathers and reduce-scatters, the data-parallel all-reduce,
ring K/V passes, tensor-parallel all-reduces) at the chip's one-way ICI bandwidth, assuming
perfect overlap. It ignores HBM bandwidth, DCN, and kernel efficiency.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
import time

import jax

from lladax import eval_calls, files, flops, model_config, saved_model, sharding, tpu_chips
from lladax.config import ConfigError, Recipe, parse
from lladax.train import optimizer, state as train_state, step as train_step

DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}
MESH_FIELDS = tuple(f.name for f in dataclasses.fields(sharding.MeshConfig) if f.name != 'rules')
GiB = tpu_chips.GiB
# Policies whose backward pass runs the attention forward again (and, for the ring, its K/V
# passes): all that do not keep the kernels' named residuals.
RERUNS_ATTENTION = ('full', 'minimal', 'save_qkv_proj', 'save_qkv_context')
HEADROOM = 0.9   # a plan above this fraction of HBM is ranked after every plan below it


def parse_mesh(spec: str, base: sharding.MeshConfig) -> sharding.MeshConfig:
  """'context=16,fsdp=-1' -> `base` with those sizes replaced."""
  sizes = {}
  for part in filter(None, (p.strip() for p in spec.split(','))):
    name, sep, value = part.partition('=')
    if not sep or name.strip() not in MESH_FIELDS or not value.strip().lstrip('-').isdigit():
      raise ConfigError(f'config.plan.meshes entry {spec!r} is not a list of axis=size; write '
                        f"e.g. 'context=16,fsdp=-1' with axes from {', '.join(MESH_FIELDS)}.")
    sizes[name.strip()] = int(value)
  return dataclasses.replace(base, **sizes)


def mesh_label(sizes: dict) -> str:
  return ' '.join(f'{k}={v}' for k, v in sizes.items())


def recompute_per_token(cfg: model_config.ModelConfig, seq_len: int, policy: str) -> float:
  """Forward FLOPs per token that `policy` recomputes in the backward pass (an estimate).

  'full' reruns the whole block; 'minimal' keeps the weight matmuls (dots without batch
  dimensions); the save_qkv_* policies keep q/k/v and rerun the other weight matmuls. Only the
  save_*attention policies keep the kernels' output and log-sum-exp (named in their custom
  VJPs, lladax/remat.py), so only they skip the attention forward in the backward pass; every
  other policy but 'none' reruns it (a jaxpr of the ring kernel's gradient shows its forward
  ring twice). Embedding and LM head sit outside the scanned block and are never rerun.
  """
  d, h, kh, hd, f, l = (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim,
                        cfg.mlp_hidden_size, cfg.n_layers)
  block = 2.0 * l * (d * (2 * h + 2 * kh) * hd + 3 * d * f)
  qkv = 2.0 * l * d * (h + 2 * kh) * hd
  attention = flops.forward_per_token(cfg, seq_len)['attention']
  return {'none': 0.0, 'full': block + attention, 'minimal': attention,
          'save_qkv_proj': block - qkv + attention,
          'save_qkv_context': block - qkv + attention,
          'save_attention': block,
          'save_qkv_attention': block - qkv}[policy]


def step_flops(cfg: model_config.ModelConfig, batch: int, seq_len: int) -> dict:
  """Per-step FLOPs: 'model' (forward + backward, the MFU convention) and 'executed' (plus what
  the remat policy recomputes)."""
  tokens = batch * seq_len
  model = flops.train_per_token(cfg, seq_len) * tokens
  return {'model': model,
          'executed': model + recompute_per_token(cfg, seq_len, cfg.remat_policy) * tokens}


def ici_bytes(cfg: model_config.ModelConfig, sizes: dict, batch: int, seq_len: int,
              microbatches: int = 1) -> dict:
  """Bytes each chip sends over ICI per step, by cause (ring-collective volumes, an estimate)."""
  d, f, c, t = (sizes['data'], sizes['fsdp'], sizes['context'], sizes['tensor'])
  pb, cb = DTYPE_BYTES[cfg.param_dtype], DTYPE_BYTES[cfg.dtype]
  dm, l = cfg.d_model, cfg.n_layers
  block_params = l * (dm * (2 * cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim +
                      3 * dm * cfg.mlp_hidden_size)
  table_params = cfg.vocab_size * dm * (1 if cfg.weight_tying else 2)
  reruns_weights = cfg.remat_policy not in ('none', 'minimal')
  reruns_attention = cfg.remat_policy in RERUNS_ATTENTION   # see recompute_per_token
  # FSDP (over fsdp x context, as 'embed' is sharded): weights gathered (in their stored
  # dtype) for the forward, the backward and any recomputation of every microbatch; gradients
  # reduce-scattered as often.
  shards = f * c
  share = (shards - 1) / shards
  gathers = 2 + (1 if reruns_weights else 0)
  fsdp = share * pb / t * (block_params * (gathers + 1) + table_params * 3) * microbatches
  # Data parallelism: an all-reduce of the (fsdp x tensor)-sharded gradients.
  data = 2 * (d - 1) / d * pb * (block_params + table_params) / (shards * t)
  # Ring attention: each chip forwards its K and V block c-1 times per pass; the backward pass
  # also carries float32 dK and dV.
  rows = batch / (d * f)
  kv = rows * seq_len / c * max(cfg.kv_heads // t, 1) * cfg.head_dim * cb * 2 * l
  passes = 1 + (1 if reruns_attention else 0) + 1 + 2 * 4 / cb
  context = kv * (c - 1) * passes
  # Tensor parallelism: two all-reduces of the residual stream per layer and pass.
  act = rows * seq_len / c * dm * cb * l
  tensor = 2 * (t - 1) / t * act * 2 * (2 + (1 if reruns_weights else 0))
  total = fsdp + data + context + tensor
  return {'fsdp': fsdp, 'data': data, 'context': context, 'tensor': tensor, 'total': total}


def memory(compiled) -> dict:
  """Per-chip bytes from the compiler's buffer assignment."""
  m = compiled.memory_analysis()
  out = {'arguments': m.argument_size_in_bytes, 'outputs': m.output_size_in_bytes,
         'aliased': m.alias_size_in_bytes, 'temporaries': m.temp_size_in_bytes,
         'code': m.generated_code_size_in_bytes}
  # Donated outputs reuse their argument's buffer, so count them once.
  out['total'] = (out['arguments'] + out['outputs'] - out['aliased'] + out['temporaries'] +
                  out['code'])
  return out


def _fit(mem: dict, chip: tpu_chips.Chip) -> dict:
  """memory, hbm_fraction and status of a compiled program; 'why' when its buffers, though
  compiled, exceed HBM."""
  fraction = mem['total'] / chip.hbm_bytes
  out = {'memory': mem, 'hbm_fraction': fraction, 'status': 'fits' if fraction <= 1 else 'over HBM'}
  if fraction > 1:
    out['why'] = f'{_gib(mem["total"])} of {_gib(chip.hbm_bytes)} GiB HBM'
  return out


def _out_of_memory(error: Exception) -> str | None:
  """The compiler's one-line account of an HBM overflow, or None for other errors."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text:
    return None
  used = re.search(r'Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm', text)
  if used:
    return f'needs {used.group(1)} of {used.group(2)} HBM'
  exceeds = re.search(r'memory required for (.+?) \(([\d.]+[KMGT]?)\) exceeds available HBM '
                      r'\(([\d.]+[KMGT]?)\)', text)
  if exceeds:
    return f'{exceeds.group(1)} need {exceeds.group(2)}, more than the {exceeds.group(3)} HBM'
  exceeds = re.search(r'exceeds available HBM \(([\d.]+[KMGT]?)\)', text)
  if exceeds:
    return f'exceeds the {exceeds.group(1)} HBM available'
  return text.strip().splitlines()[0][:300]


def _compile(fn, *args):
  """(compiled, None) or (None, why) when the program does not fit in HBM."""
  return _compile_lowered(lambda: fn.lower(*args))


def _compile_lowered(lower):
  """lower() compiled: (compiled, None), or (None, why) when the program does not fit in HBM."""
  try:
    return lower().compile(), None
  except Exception as e:  # pylint: disable=broad-except
    why = _out_of_memory(e)
    if why is None:
      raise
    return None, why


def _setup(job: _Job, mesh_cfg: sharding.MeshConfig, policy: str):
  """(model config, mesh, rules, graphdef, abstract params, their shardings) for a candidate;
  raises ConfigError when the mesh does not suit the topology."""
  mcfg = dataclasses.replace(job.mcfg, remat_policy=policy)
  mesh = sharding.make_mesh(mesh_cfg, job.devices)
  rules = sharding.parse_rules(mesh_cfg.rules)
  graphdef, params, _ = train_state.abstract_state(mcfg, job.tx)
  return mcfg, mesh, rules, graphdef, params, sharding.param_shardings(params, mesh, rules)


def plan_one(job: _Job, mesh_cfg: sharding.MeshConfig, policy: str,
             microbatches: int) -> dict:
  """Compiles the training step for one mesh, remat policy and microbatch count."""
  step_cfg = dataclasses.replace(job.step, microbatches=microbatches)
  record = {'remat_policy': policy, 'microbatches': microbatches,
            'loss_chunks': step_cfg.loss_chunks, 'attention_kernel': job.mcfg.attention_kernel,
            'mesh': mesh_label({a: getattr(mesh_cfg, a) for a in sharding.AXES})}
  start = time.perf_counter()
  try:
    mcfg, mesh, rules, graphdef, params, param_sh = _setup(job, mesh_cfg, policy)
  except (ConfigError, NotImplementedError) as e:  # sizes that do not fit the device count
    return {**record, 'status': 'invalid', 'why': str(e).splitlines()[0]}
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  record['mesh'] = mesh_label(sizes)
  replicas = sizes['data'] * sizes['fsdp']
  if job.batch % (microbatches * replicas):
    return {**record, 'status': 'invalid',
            'why': f'{job.batch} rows in {microbatches} microbatch(es) do not split over '
                   f'data x fsdp = {replicas}'}
  opt_state = jax.eval_shape(job.tx.init, params)
  opt_sh = train_state.opt_shardings(job.tx, params, param_sh, mesh)
  shape = (job.batch, job.seq_len)
  batch_sh = train_state.batch_sharding(mesh, shape, rules)
  record['batch_spec'] = str(batch_sh.spec)
  step = train_state.sharded_update(graphdef, job.tx, mesh, param_sh, opt_sh, batch_sh, rules,
                                   mask_id=mcfg.mask_token_id, eps=job.eps, sft=job.sft,
                                   step_cfg=step_cfg)
  try:
    compiled, why = _compile(step, params, opt_state, train_state.abstract_batch(shape),
                             train_state.abstract_key())
  except ValueError as e:  # a kernel refusing the layout (e.g. a length context does not divide)
    return {**record, 'status': 'invalid', 'why': str(e).splitlines()[0]}
  record['compile_seconds'] = round(time.perf_counter() - start, 1)
  if compiled is None:
    return {**record, 'status': 'does not fit', 'why': why}
  mem = memory(compiled)
  del compiled
  gc.collect()
  chips = len(job.devices)
  fl = step_flops(mcfg, job.batch, job.seq_len)
  comm = ici_bytes(mcfg, sizes, job.batch, job.seq_len, microbatches)
  compute_s = fl['executed'] / chips / job.chip.peak_bf16_flops
  ici_s = comm['total'] / (job.chip.ici_bandwidth / 2)
  step_s = max(compute_s, ici_s)
  record.update(
      _fit(mem, job.chip),
      flops={'model_per_step': fl['model'], 'executed_per_step': fl['executed'],
             'model_per_chip': fl['model'] / chips, 'executed_per_chip': fl['executed'] / chips},
      ici_bytes_per_chip=comm,
      roofline={'compute_seconds': compute_s, 'ici_seconds': ici_s, 'step_seconds': step_s,
                'bound': 'compute' if compute_s >= ici_s else 'ici',
                'mfu_ceiling': fl['model'] / (chips * job.chip.peak_bf16_flops * step_s),
                'tokens_per_second_per_chip': job.batch * job.seq_len / step_s / chips})
  return record


def plan_eval(job: _Job, mesh_cfg: sharding.MeshConfig, policy: str, batch: int) -> dict:
  """Compiles the evaluation forward (loss and metrics, no gradient) on the same layout."""
  mcfg, mesh, rules, graphdef, params, param_sh = _setup(job, mesh_cfg, policy)
  shape = (batch or job.batch, job.seq_len)
  batch_sh = train_state.batch_sharding(mesh, shape, rules)
  forward = train_state.sharded_eval(graphdef, mesh, param_sh, batch_sh, rules,
                                    mask_id=mcfg.mask_token_id, eps=job.eps, sft=job.sft,
                                    step_cfg=job.step)
  compiled, why = _compile(forward, params, train_state.abstract_batch(shape),
                           train_state.abstract_key())
  if compiled is None:
    return {'batch': shape[0], 'status': 'does not fit', 'why': why}
  mem = memory(compiled)
  del compiled
  gc.collect()
  forward_flops = flops.forward_per_token(mcfg, job.seq_len)['total'] * shape[0] * job.seq_len
  return {'batch': shape[0], 'status': 'fits', 'memory': mem,
          'hbm_fraction': mem['total'] / job.chip.hbm_bytes,
          'flops_per_chip': forward_flops / len(job.devices)}


def advice(records: list[dict], job: _Job, topology: str) -> str:
  """One sentence: why nothing fits and which knobs to turn, most effective first."""
  tried = [r for r in records if r['status'] != 'invalid']
  if not tried:
    return (f'no mesh in the plan is valid for {topology}: {records[0]["why"]}' if records else
            f'nothing was planned for {topology}.')
  knobs = []
  if 'full' not in {r['remat_policy'] for r in tried}:
    knobs.append("config.model.remat_policy='full'")
  most = max(r['microbatches'] for r in tried)
  knobs.append(f'more config.step.microbatches (tried up to {most}; they must divide the batch '
               f'of {job.batch})')
  if job.step.loss_chunks * job.mcfg.vocab_size * job.seq_len > 2 ** 31:
    knobs.append(f'more config.step.loss_chunks (now {job.step.loss_chunks})')
  contexts = sorted({int(r['mesh'].split('context=')[1].split()[0]) for r in tried})
  knobs.append(f'a larger config.mesh.context (tried {", ".join(map(str, contexts))})')
  knobs.append(f'a smaller config.data.batch_size (now {job.batch})')
  knobs.append('a larger topology')
  worst = sorted({f'{r["mesh"]}, remat {r["remat_policy"]}, {r["microbatches"]} microbatch(es): '
                  f'{r["why"]}' for r in tried if r.get('why')})
  return f'no plan fits {topology} ({"; ".join(worst)}); try ' + ', or '.join(knobs) + '.'


def _gib(x: float) -> str:
  return f'{x / GiB:.2f}'


def _si(x: float, unit: str) -> str:
  """3.1e15 FLOP -> '3.10 PFLOP'; 0.004 s -> '4.00 ms'."""
  if unit == 's' and x < 1:
    return f'{x * 1e3:.2f} ms'
  for scale, prefix in ((1e18, 'E'), (1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'),
                        (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.2f} {prefix}{unit}'
  return f'{x:.2f} {unit}'


def _count(x: float) -> str:
  for scale, suffix in ((1e9, 'B'), (1e6, 'M'), (1e3, 'k')):
    if x >= scale:
      return f'{x / scale:.2f}{suffix}'
  return str(int(x))


def _memory_cells(r: dict) -> str:
  m = r['memory']
  return (f'{_gib(m["arguments"]):>7} {_gib(m["temporaries"]):>7} {_gib(m["outputs"]):>7} '
          f'{_gib(m["total"]):>7} {r["hbm_fraction"]:>5.0%}')


def _status(r: dict) -> str:
  return r['status'] + (' (tight)' if r['status'] == 'fits' and r['hbm_fraction'] > HEADROOM
                        else '')


def report(records: list[dict], job: _Job, topology: str, best: dict | None) -> str:
  chip, chips = job.chip, len(job.devices)
  lines = [f'plan for {topology}: {chips} chips ({chip.device_kind}, {_gib(chip.hbm_bytes)} GiB '
           f'HBM, {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16); '
           f'{_count(job.mcfg.num_params())} parameters, batch {job.batch} x {job.seq_len} = '
           f'{_count(job.batch * job.seq_len)} tokens per step, attention kernel '
           f'{job.mcfg.attention_kernel!r}, loss in {job.step.loss_chunks} chunk(s)',
           f'{"mesh":<38} {"remat":<18} {"mb":>3} {"args":>7} {"temp":>7} {"out":>7} '
           f'{"total":>7} {"HBM":>5}  {"MFU<=":>6}  status (GiB per chip)']
  for r in records:
    head = f'{r["mesh"]:<38} {r["remat_policy"]:<18} {r["microbatches"]:>3}'
    if 'memory' in r:
      lines.append(f'{head} {_memory_cells(r)}  {r["roofline"]["mfu_ceiling"]:>6.1%}  '
                   f'{_status(r)}')
    else:
      lines.append(f'{head} {"":>39}  {"":>6}  {r["status"]}: {r["why"]}')
  if best:
    fl, rf = best['flops'], best['roofline']
    lines += [
        f'best: {best["mesh"]}, remat {best["remat_policy"]}, {best["microbatches"]} '
        f'microbatch(es): {_gib(best["memory"]["total"])} GiB per chip',
        f'  FLOPs per step: {_si(fl["model_per_step"], "FLOP")} model (forward + backward), '
        f'{_si(fl["executed_per_step"], "FLOP")} executed with recomputation; '
        f'{_si(fl["executed_per_chip"], "FLOP")} per chip',
        f'  roofline: compute {_si(rf["compute_seconds"], "s")}, ICI '
        f'{_si(rf["ici_seconds"], "s")} -> {_si(rf["step_seconds"], "s")} per step '
        f'({rf["bound"]}-bound), MFU ceiling {rf["mfu_ceiling"]:.1%}, '
        f'{rf["tokens_per_second_per_chip"]:.0f} tokens/s/chip']
    if 'eval' in best:
      e = best['eval']
      lines.append(f'  evaluation forward (batch {e["batch"]}): ' + (
          f'{_gib(e["memory"]["total"])} GiB per chip ({e["hbm_fraction"]:.0%} of HBM)'
          if e['status'] == 'fits' else f'does not fit: {e["why"]}'))
  return '\n'.join(lines)


def _write_json(path: str, value) -> None:
  files.write_json(path, value, indent=2)


def run(config) -> dict:
  """Plans `config` for `config.plan.topology`; returns {'plans', 'best'} and prints a report.

  Raises ConfigError naming the knobs to turn when no candidate fits.
  """
  recipe = parse(config)
  if any(recipe.has(name) for name in eval_calls.EVAL_SECTIONS):
    return run_eval(recipe)
  pcfg = recipe.plan
  mcfg = model_config.resolve_rope(recipe.model, recipe.rope)
  base_mesh = recipe.mesh
  dcfg = recipe.data
  tcfg = recipe.train
  ocfg = recipe.optim
  step_cfg = recipe.step
  meshes = [parse_mesh(m, base_mesh) for m in pcfg.meshes] or [base_mesh]
  microbatches = list(pcfg.microbatches) or [step_cfg.microbatches]
  policies = list(pcfg.remat_policies) or [mcfg.remat_policy]
  for p in policies:
    if p not in model_config.REMAT_POLICIES:
      raise ConfigError(f'config.plan.remat_policies has {p!r}; choose from '
                        f'{", ".join(model_config.REMAT_POLICIES)}.')
  chip, devices = tpu_chips.topology_devices(pcfg.topology, pcfg.num_slices)
  job = _Job(mcfg, optimizer.adamw(ocfg), chip, devices, dcfg.batch_size, dcfg.seq_len,
             tcfg.mask_eps, tcfg.objective == 'sft', step_cfg)
  path = pcfg.output or (os.path.join(recipe.workdir, 'plan.json')
                         if recipe.workdir else '')
  header = {'topology': pcfg.topology, 'chips': len(devices), 'chip': dataclasses.asdict(chip),
            'batch': job.batch, 'seq_len': job.seq_len, 'params': mcfg.num_params(),
            'attention_kernel': mcfg.attention_kernel, 'step': dataclasses.asdict(step_cfg)}
  records = []
  candidates = [(m, p, k) for m in meshes for p in policies for k in microbatches]
  start = time.perf_counter()
  for i, (mesh_cfg, policy, k) in enumerate(candidates):
    logging.info('plan %d/%d (%.0f s so far): compiling for %s with %s, remat %s, %d '
                 'microbatch(es)', i + 1, len(candidates), time.perf_counter() - start,
                 pcfg.topology, mesh_label({a: getattr(mesh_cfg, a) for a in sharding.AXES}),
                 policy, k)
    records.append(plan_one(job, mesh_cfg, policy, k))
    if path:  # a long sweep keeps what it has learnt if it is stopped
      _write_json(path, {**header, 'plans': records, 'best': None, 'complete': False})
  fits = [r for r in records if r['status'] == 'fits']
  # Plans with headroom first (runtime buffers, fragmentation and the compiler's own reserve
  # need some), then the highest MFU ceiling, the least ICI time, the least memory.
  best = max(fits, default=None, key=lambda r: (
      r['hbm_fraction'] <= HEADROOM, round(r['roofline']['mfu_ceiling'], 4),
      -round(r['roofline']['ici_seconds'], 3), -r['memory']['total']))
  if best is not None and pcfg.evaluate:
    mesh_cfg, policy, _ = candidates[records.index(best)]
    logging.info('plan: compiling the evaluation forward for the best plan')
    best['eval'] = plan_eval(job, mesh_cfg, policy, pcfg.eval_batch_size)
  print(report(records, job, pcfg.topology, best), flush=True)
  result = {**header, 'plans': records, 'best': best, 'complete': True}
  if path:
    _write_json(path, result)
    logging.info('wrote %s', path)
  if best is None:
    raise ConfigError(advice(records, job, pcfg.topology))
  return result


def _eval_model(recipe: Recipe) -> model_config.ModelConfig:
  """The network an evaluation job runs: the checkpoint's shape when config.checkpoint names
  one (as the job loads it), else config.model's; config.model's compute settings either way."""
  if recipe.checkpoint:
    return saved_model.config_for_recipe(recipe.checkpoint, recipe.model, recipe.rope)[0]
  return model_config.resolve_rope(recipe.model, recipe.rope)


def eval_report(records: list[dict], mcfg: model_config.ModelConfig, chip, topology: str) -> str:
  lines = [f'evaluation plan for one chip of {topology} ({chip.device_kind}, '
           f'{_gib(chip.hbm_bytes)} GiB HBM), as the job runs without config.eval.mesh_hook; '
           f'{_count(mcfg.num_params())} parameters in {mcfg.param_dtype}, compute {mcfg.dtype}, '
           f'attention {mcfg.attention_kernel!r}, RoPE base {mcfg.rope_theta:.6g}',
           f'{"job":<15} {"rows x tokens":>16} {"decode":>16} {"attention":<14} {"args":>7} '
           f'{"temp":>7} {"out":>7} {"total":>7} {"HBM":>5}  {"FLOP":>10}  status (GiB per chip)']
  for r in records:
    decode = (f'{r["gen_length"]}/{r["block_length"]}/{r["steps"]}' if 'steps' in r else
              f'score {r["scored_tokens"]}')
    head = (f'{r["job"]:<15} {r["batch"]:>6} x {r["prompt_tokens"]:>7} {decode:>16} '
            f'{r["attention"]:<14}')
    if 'memory' in r:
      lines.append(f'{head} {_memory_cells(r)}  {_si(r["flops"], ""):>10}  {_status(r)}')
    else:
      lines.append(f'{head} {"":>39}  {_si(r["flops"], ""):>10}  {r["status"]}: {r["why"]}')
    lines.append(f'  {r["length_from"]}')
  return '\n'.join(lines)


def run_eval(recipe: Recipe) -> dict:
  """Plans an evaluation recipe's model calls at its longest inputs (lladax/eval_calls.py)."""
  pcfg = recipe.plan
  mcfg = _eval_model(recipe)
  chip, devices = tpu_chips.topology_devices(pcfg.topology, pcfg.num_slices)
  calls = eval_calls.eval_calls(recipe, pcfg.eval_length)
  path = pcfg.output or (os.path.join(recipe.workdir, 'plan.json') if recipe.workdir else '')
  header = {'topology': pcfg.topology, 'chips': 1, 'chip': dataclasses.asdict(chip),
            'params': mcfg.num_params(), 'attention_kernel': mcfg.attention_kernel,
            'model': dataclasses.asdict(mcfg)}
  records = []
  for call in calls:
    logging.info('plan: compiling %s (%d x %d tokens) for one %s chip', call.job, call.batch,
                 call.prompt, chip.name)
    record = eval_calls.describe(call, mcfg)
    compiled, why = _compile_lowered(lambda c=call: eval_calls.lowered(c, mcfg, devices[0]))
    if compiled is None:
      record.update(status='does not fit', why=why)
    else:
      mem = memory(compiled)
      del compiled
      gc.collect()
      record.update(_fit(mem, chip))
    records.append(record)
  print(eval_report(records, mcfg, chip, pcfg.topology), flush=True)
  result = {**header, 'evals': records}
  if path:
    _write_json(path, result)
    logging.info('wrote %s', path)
  failed = [r for r in records if r['status'] != 'fits']
  if failed:
    knobs = []
    if mcfg.attention_kernel == 'reference':
      knobs.append("config.model.attention_kernel='auto' (the reference builds the [T, S] scores)")
    if max(r['batch'] for r in failed) > 1:
      knobs.append('a smaller config.eval.batch_size')
    knobs += ['a larger chip in config.plan.topology',
              'a model sharded by config.eval.mesh_hook']
    raise ConfigError(f'{", ".join(r["job"] for r in failed)} does not fit one {chip.name} chip '
                      f'({failed[0]["why"]}); try ' + ', or '.join(knobs) + '.')
  return result


@dataclasses.dataclass(frozen=True)
class PlanConfig:
  """What `config.plan` asks of the plan job."""
  topology: str = 'v5p:4x4x4'           # <chip>:<chips per dimension>, e.g. v4:4x4x4, v5e:4x4
  num_slices: int = 1                   # >1 plans a multi-slice job (config.mesh.dcn_* sizes)
  meshes: tuple[str, ...] = ()          # overrides of config.mesh to sweep, e.g.
                                        # 'context=16,fsdp=-1'; () plans config.mesh alone
  remat_policies: tuple[str, ...] = ()  # policies to sweep; () plans config.model.remat_policy
  microbatches: tuple[int, ...] = ()    # gradient-accumulation counts to sweep; () plans
                                        # config.step.microbatches
  evaluate: bool = True                 # also compile the evaluation forward for the best plan
  eval_batch_size: int = 0              # rows per evaluation batch; 0 = the training batch
  output: str = ''                      # JSON path; '' writes <workdir>/plan.json if workdir set
  eval_length: int = 0                  # evaluation recipes: prompt tokens to plan; 0 = the
                                        # recipe's longest length (lladax/eval_calls.py)

  def __post_init__(self):
    tpu_chips.parse_topology(self.topology)
    if (self.num_slices < 1 or self.eval_batch_size < 0 or self.eval_length < 0
        or min(self.microbatches, default=1) < 1):
      raise ConfigError('config.plan.num_slices and microbatches must be >= 1, and '
                        'eval_batch_size and eval_length >= 0.')


@dataclasses.dataclass(frozen=True)
class _Job:
  """What every candidate shares: the model, optimizer, batch and target."""
  mcfg: model_config.ModelConfig
  tx: object
  chip: tpu_chips.Chip
  devices: list
  batch: int
  seq_len: int
  eps: float
  sft: bool
  step: train_step.StepConfig
