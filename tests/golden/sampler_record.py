"""Records LLaDA's own sampler and lm-eval harness (ML-GSAI/LLaDA generate.py, eval_llada.py) on
the tiny model of sampler_inputs.py: generated token ids, suffix_greedy_prediction's decodes and
verdicts, the likelihood's Monte Carlo draws, the stratified mask counts, _encode_pair's tokens and
generate_until's texts.

The official files are executed from the fetched tree with `transformers` and `accelerate` stood
in (they are imported at module level but only used to load a model, which the recorder hands in
directly: tests/torch_llada.py's network with LLaDA's attention_mask, float32). `datasets`,
`lm_eval` and `tqdm` are the real packages. A tokenizer for eval_llada.py is the Hugging Face
`tokenizers` library over sampler_inputs.write_tokenizer's tokenizer.json (character tokens at the
live text ids, LLaDA's special tokens at their ids), called as transformers' fast tokenizer calls
it (its decode's clean_up_tokenization_spaces is not modelled: no text here has a space before
punctuation that it would remove).

Ties: torch.topk leaves the order of equal confidences unspecified and lladax sends ties to the
lowest position. Every selection of the recorded runs is checked: a boundary between chosen and
not chosen candidates must be a clear gap, or an exact tie at confidence 0 (a deferred EOS / EoT)
that torch resolved as lladax does; the recorder fails otherwise.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from golden import sampler_inputs as si

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import torch_llada as tl  # noqa: E402  (tests/)

GAP = 1e-5  # the smallest relative confidence gap at a selection boundary


class HFLike(torch.nn.Module):
  """tests/torch_llada.py's LLaDA called as LLaDA's Hugging Face model: model(ids,
  attention_mask=...).logits, padded keys never attended (modeling_llada adds the float minimum
  to their attention scores)."""

  def __init__(self, net: tl.LLaDA):
    super().__init__()
    self.net = net
    self.device = torch.device('cpu')
    self.calls = 0

  def forward(self, input_ids, attention_mask=None):
    self.calls += 1
    tr = self.net.model.transformer
    x = tr['wte'](input_ids)
    keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    for block in tr['blocks']:
      x = _block(block, x, keep)
    x = tr['ln_f'](x)
    return types.SimpleNamespace(logits=tr['ff_out'](x))


def _block(blk: tl.Block, x, keep):
  b, t, d = x.shape
  h = blk.attn_norm(x)
  q = blk.q_proj(h).view(b, t, blk.h, blk.hd).transpose(1, 2)
  k = blk.k_proj(h).view(b, t, blk.kh, blk.hd).transpose(1, 2)
  v = blk.v_proj(h).view(b, t, blk.kh, blk.hd).transpose(1, 2)
  q, k = tl.rotate(q, blk.theta), tl.rotate(k, blk.theta)
  o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=False)
  x = x + blk.attn_out(o.transpose(1, 2).reshape(b, t, d))
  h = blk.ff_norm(x)
  return x + blk.ff_out(F.silu(blk.ff_proj(h)) * blk.up_proj(h))


def torch_model() -> HFLike:
  net = tl.LLaDA(si.hf_config())
  net.load_state_dict({k: torch.from_numpy(v) for k, v in si.weights().items()}, strict=True)
  return HFLike(net.eval())


# ---------------------------------------------------------------------------------------------
# A tokenizer for eval_llada.py


class FastTokenizer:
  """What eval_llada.py calls of a transformers fast tokenizer, on the `tokenizers` library:
  tokenizer(text)['input_ids'] (add_special_tokens=True: this tokenizer, as LLaDA's, adds none)
  and decode(ids, skip_special_tokens=...)."""

  def __init__(self, path: str):
    self.tok = Tokenizer.from_file(path)

  def __call__(self, text):
    return {'input_ids': self.tok.encode(text, add_special_tokens=True).ids}

  def decode(self, ids, skip_special_tokens=False):
    ids = ids.tolist() if hasattr(ids, 'tolist') else list(ids)
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


# ---------------------------------------------------------------------------------------------
# Executing the official files


@contextlib.contextmanager
def official(root: str):
  """Imports generate.py (as `generate`) and eval_llada.py from `root` with transformers and
  accelerate stood in; yields (generate module, eval_llada module)."""
  transformers = types.ModuleType('transformers')
  transformers.AutoTokenizer = transformers.AutoModel = object
  # datasets' pickler checks this class whenever transformers is imported.
  transformers.PreTrainedTokenizerBase = type('PreTrainedTokenizerBase', (), {})
  accelerate = types.ModuleType('accelerate')

  class Accelerator:
    num_processes = 1

  accelerate.Accelerator = Accelerator
  saved = {name: sys.modules.get(name) for name in ('transformers', 'accelerate', 'generate')}
  sys.modules.update(transformers=transformers, accelerate=accelerate)
  try:
    modules = []
    for name in ('generate', 'eval_llada'):
      spec = importlib.util.spec_from_file_location(name, os.path.join(root, f'{name}.py'))
      module = importlib.util.module_from_spec(spec)
      sys.modules[name] = module
      spec.loader.exec_module(module)
      modules.append(module)
    yield tuple(modules)
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
    sys.modules.pop('eval_llada', None)


@contextlib.contextmanager
def checked_topk():
  """torch.topk / torch.sort as the official code calls them, checked for selection ties."""
  topk, sort = torch.topk, torch.sort
  stats = {'selections': 0, 'zero_ties': 0}

  def check(values, chosen):
    values = values.detach().double().numpy()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))  # lladax's rule
    k = len(chosen)
    stats['selections'] += 1
    if sorted(order[:k]) != sorted(chosen):
      raise AssertionError(f'torch chose {sorted(chosen)}, lladax would choose {sorted(order[:k])} '
                           f'(confidences {values[order[:k + 2]]})')
    if k < len(values):
      last, first_out = values[order[k - 1]], values[order[k]]
      if np.isfinite(first_out):
        if last == first_out == 0.0:
          stats['zero_ties'] += 1
        elif last - first_out <= GAP * max(abs(last), 1e-3):
          raise AssertionError(f'near tie at a selection boundary: {last} vs {first_out}')

  def checked(values, k, *args, **kwargs):
    out = topk(values, k, *args, **kwargs)
    check(values, out.indices.tolist())
    return out

  def checked_sort(values, *args, **kwargs):
    out = sort(values, *args, **kwargs)
    if values.ndim == 1 and kwargs.get('descending'):
      check(values, out.indices[:1].tolist())
    return out

  torch.topk, torch.sort = checked, checked_sort
  try:
    yield stats
  finally:
    torch.topk, torch.sort = topk, sort


def left_padded(prompts):
  width = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), width), si.PAD, dtype=torch.long)
  mask = torch.zeros((len(prompts), width), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = torch.tensor(p)
    mask[i, width - len(p):] = 1
  return ids, mask


# ---------------------------------------------------------------------------------------------
# The records


def record_generate(gen_module, model):
  out = {}
  for name, (prompt_names, kwargs) in si.GENERATE.items():
    ids, mask = left_padded([si.PROMPTS[p] for p in prompt_names])
    with checked_topk() as stats:
      x = gen_module.generate(model, ids, attention_mask=mask, mask_id=si.MASK, **kwargs)
    gen = x[:, ids.shape[1]:]
    out[name] = {'prompts': prompt_names, 'kwargs': kwargs, 'output': x.tolist(),
                 'checks': stats,
                 'masks_left': int((gen == si.MASK).sum()),
                 'prompt_masks_left': int((x[:, :ids.shape[1]] == si.MASK).sum())}
  return out


class Capture:
  """A target for suffix_greedy_prediction that records what the decode produced (its `==`
  receives the decoded tokens)."""

  def __init__(self, n):
    self.n, self.seen = n, None

  def __len__(self):
    return self.n

  def to(self, device):
    del device
    return self

  def __eq__(self, other):
    self.seen = other.tolist()
    return torch.tensor(True)


def harness(eval_module, model, tokenizer, **settings):
  """LLaDAEvalHarness without its __init__ (which loads a checkpoint): the model handed in."""
  cls = eval_module.LLaDAEvalHarness
  lm = cls.__new__(cls)
  eval_module.LM.__init__(lm)
  # lm-eval 0.4.13's LM.device is a read-only property over _device (the official code, written
  # for lm-eval 0.4.8, assigns self.device in __init__, which 0.4.13 refuses).
  lm.model, lm.tokenizer, lm._device = model, tokenizer, torch.device('cpu')
  lm.mask_id, lm.sampling_eps, lm.max_length = si.MASK, 0.0, 4096
  lm.accelerator = types.SimpleNamespace(wait_for_everyone=lambda: None)
  defaults = dict(mc_num=8, batch_size=4, is_check_greedy=True, cfg=0.0, steps=8, gen_length=8,
                  block_length=8, remasking='low_confidence')
  for key, value in {**defaults, **settings}.items():
    setattr(lm, key, value)
  return lm


def record_greedy(eval_module, model):
  out = {}
  for name, (prefix, _, cfg) in si.GREEDY.items():
    lm = harness(eval_module, model, None, cfg=cfg)
    capture = Capture(si.GREEDY_LENGTH)
    with checked_topk() as stats:
      lm.suffix_greedy_prediction(torch.tensor(prefix), capture)
    decoded = capture.seen
    other = decoded[:-1] + [(decoded[-1] + 1) % si.TEXT]
    verdicts = [bool(lm.suffix_greedy_prediction(torch.tensor(prefix), torch.tensor(t)))
                for t in (decoded, other)]
    out[name] = {'prefix': prefix, 'cfg': cfg, 'decoded': decoded, 'targets': [decoded, other],
                 'verdicts': verdicts, 'checks': stats}
  return out


def record_likelihood(eval_module, model):
  """Minibatch values of get_loglikelihood (one Monte Carlo mini-batch per call)."""
  out = {}
  for name, (prefix, target, cfg, batch, draws) in si.LIKELIHOOD.items():
    lm = harness(eval_module, model, None, cfg=cfg, mc_num=batch, batch_size=batch)
    torch.manual_seed(0)
    values = [lm.get_loglikelihood(torch.tensor(prefix), torch.tensor(target))
              for _ in range(draws)]
    out[name] = {'prefix': prefix, 'target': target, 'cfg': cfg, 'batch_size': batch,
                 'minibatch_values': values}
  return out


def record_counts(eval_module):
  """_forward_process's mask counts for every k (torch.randint made to return k)."""
  lm = harness(eval_module, None, None)
  out = []
  randint = torch.randint
  for length, batch in si.COUNTS:
    table = {}
    for k in range(1, length + 1):
      torch.randint = lambda *a, k=k, **kw: torch.tensor(k)
      try:
        lm.batch_size = batch
        seq = torch.zeros((batch, 2 + length), dtype=torch.long)
        noisy, p_mask = lm._forward_process(seq, torch.arange(2 + length) < 2)
      finally:
        torch.randint = randint
      table[k] = [int(round(float(p) * length)) for p in p_mask[:, 0]]
      assert table[k] == (noisy == si.MASK).sum(1).tolist()
    out.append({'length': length, 'batch': batch, 'counts': table})
  return out


def record_harness(eval_module, model, tokenizer):
  encode = {f'{c!r}|{t!r}': list(map(list, harness(eval_module, model, tokenizer)._encode_pair(
      c, t))) for c, t in si.PAIRS}
  until = {}
  for name, (settings, requests) in si.UNTIL.items():
    lm = harness(eval_module, model, tokenizer, **settings)
    reqs = [types.SimpleNamespace(args=(context, {'until': stops})) for context, stops in requests]
    with checked_topk() as stats:
      texts = lm.generate_until(reqs)
    raw = []
    for context, _ in requests:  # the generated tokens, for the tests' diagnostics
      prompt = torch.tensor([tokenizer(context)['input_ids']])
      x = sys.modules['generate'].generate(
          model, prompt, steps=lm.steps, gen_length=lm.gen_length, block_length=lm.block_length,
          temperature=0, cfg_scale=lm.cfg, remasking=lm.remasking, mask_id=si.MASK)
      raw.append(x[0, prompt.shape[1]:].tolist())
    until[name] = {'settings': settings, 'requests': requests, 'texts': texts, 'generated': raw,
                   'checks': stats}
  return {'encode_pair': encode, 'generate_until': until}


def record(sources: dict, work: str) -> dict:
  root = sources['llada']['path']
  torch.set_num_threads(1)
  model = torch_model()
  tokenizer = FastTokenizer(si.write_tokenizer(os.path.join(work, 'tokenizer.json')))
  with torch.no_grad(), official(root) as (gen_module, eval_module):
    payload = {
        'generate': record_generate(gen_module, model),
        'suffix_greedy': record_greedy(eval_module, model),
        'likelihood': record_likelihood(eval_module, model),
        'mask_counts': record_counts(eval_module),
        'harness': record_harness(eval_module, model, tokenizer),
    }
  return payload
