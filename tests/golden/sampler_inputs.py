"""Inputs of the sampler golden tests: a tiny LLaDA with LLaDA-8B's special ids, its prompts and
the settings LLaDA's generate.py and eval_llada.py are run with (tests/golden/sampler_record.py).

The weights are NumPy draws (PCG64: the same on every platform and version) in the Hugging Face
layout, so the recorder loads them into tests/torch_llada.py and the tests into lladax. The
vocabulary has LLaDA-8B's 126464 rows, because the official code hard-codes EOS (126081) and EoT
(126348); only a few rows are live (text ids 0..TEXT-1, EOS, EoT, the mask), the others are zero
(logit exactly 0, never the argmax in practice). The LM head's mask, EOS and EoT rows are made
to win at some positions: the mask (what mask_prediction='allow' keeps masked), EOS / EoT (what
logits_eos_inf and confidence_eos_eot_inf act on).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models

from lladax import model as model_lib, model_config
from lladax.hf import params as hf_params

BOS, MASK, EOS, EOT = 126080, 126336, 126081, 126348
ROWS = 126464
TEXT = 40                  # live text ids 0..TEXT-1
PAD = EOS                  # LLaDA-8B's pad_token_id
SEED = 20250916
D, LAYERS, HEADS, MLP = 32, 2, 4, 64
HEAD_STD = 0.45            # LM head rows of text tokens
# The LM head rows of the mask, EOS and EoT copy (slightly scaled) the rows of three text tokens,
# so that each is the argmax at some positions.
SHADOWS = {MASK: (11, 1.03), EOS: (39, 1.04), EOT: (5, 1.04)}
PREFIX = 'model.transformer.'


def hf_config() -> dict:
  """config.json of the tiny model (LLaDA-8B's fields, shrunk)."""
  return {
      'activation_type': 'silu', 'alibi': False, 'architectures': ['LLaDAModelLM'],
      'attention_layer_norm': False, 'bias_for_layer_norm': False, 'block_group_size': 1,
      'block_type': 'llama', 'bos_token_id': BOS, 'd_model': D, 'embedding_size': ROWS,
      'eos_token_id': EOS, 'eot_token_id': EOT, 'flash_attention': False, 'include_bias': False,
      'include_qkv_bias': False, 'input_emb_norm': False, 'layer_norm_type': 'rms',
      'layer_norm_with_affine': True, 'mask_token_id': MASK, 'max_sequence_length': 64,
      'mlp_hidden_size': MLP, 'mlp_ratio': 4, 'model_type': 'llada', 'multi_query_attention': None,
      'n_heads': HEADS, 'n_kv_heads': HEADS, 'n_layers': LAYERS, 'pad_token_id': PAD,
      'rms_norm_eps': 1e-5, 'rope': True, 'rope_full_precision': True, 'rope_theta': 10000.0,
      'scale_logits': False, 'torch_dtype': 'float32', 'vocab_size': 126349,
      'weight_tying': False,
  }


def live_ids() -> np.ndarray:
  return np.asarray(list(range(TEXT)) + [EOS, MASK, EOT])


def weights() -> dict[str, np.ndarray]:
  """HF state dict (name -> float32 array in PyTorch's [out, in] layout)."""
  rng = np.random.default_rng(SEED)
  live = live_ids()
  out = {}
  wte = np.zeros((ROWS, D), np.float32)
  wte[live] = rng.normal(0.0, 1.0, (len(live), D))
  out[PREFIX + 'wte.weight'] = wte

  def linear(n_out, n_in):
    return rng.normal(0.0, n_in ** -0.5, (n_out, n_in)).astype(np.float32)

  def norm():
    return (1.0 + 0.2 * rng.normal(size=D)).astype(np.float32)

  for i in range(LAYERS):
    p = f'{PREFIX}blocks.{i}.'
    out[p + 'attn_norm.weight'] = norm()
    for name in ('q_proj', 'k_proj', 'v_proj', 'attn_out'):
      out[p + name + '.weight'] = linear(D, D)
    out[p + 'ff_norm.weight'] = norm()
    out[p + 'ff_proj.weight'] = linear(MLP, D)
    out[p + 'up_proj.weight'] = linear(MLP, D)
    out[p + 'ff_out.weight'] = linear(D, MLP)
  out[PREFIX + 'ln_f.weight'] = norm()
  head = np.zeros((ROWS, D), np.float32)
  head[live] = rng.normal(0.0, HEAD_STD, (len(live), D))
  for token, (text, scale) in SHADOWS.items():
    head[token] = scale * head[text]
  out[PREFIX + 'ff_out.weight'] = head
  return out


def _text(rng, n):
  return [int(t) for t in rng.integers(0, TEXT, n)]


def _prompts() -> dict[str, list[int]]:
  rng = np.random.default_rng(SEED + 1)
  a = _text(rng, 9)
  b = _text(rng, 6)
  c = _text(rng, 12)
  d = _text(rng, 7)
  return {
      'plain': a,                                             # no mask
      'infill': a[:3] + [MASK] + a[4:7] + [MASK, MASK] + a[9:],  # three masks
      'short': b[:2] + [MASK] + b[3:],
      'long': c[:5] + [MASK] + c[6:],
      'one': d,
  }


PROMPTS = _prompts()


# Settings of generate(): name -> prompts (a batch is left-padded with an attention_mask) and the
# keyword arguments of LLaDA's generate(). Temperature 0 everywhere except 'defer_hot', whose
# temperature is so small that the Gumbel noise cannot change an argmax but the code path of a
# positive temperature runs (where confidence_eos_eot_inf defers EoT only).
GENERATE = {
    'single_block': (['infill'], dict(gen_length=8, block_length=8, steps=8)),
    'blocks': (['infill'], dict(gen_length=12, block_length=4, steps=6)),
    'carry_over': (['plain'], dict(gen_length=16, block_length=4, steps=8)),
    'batch': (['infill', 'short', 'long'], dict(gen_length=8, block_length=4, steps=4)),
    # The unconditional copy masks the prompt's tokens, not the prompt masks generate() fills
    # (they stay visible there once filled): these settings tell the two apart.
    'cfg': (['infill', 'short'], dict(gen_length=12, block_length=4, steps=12, cfg_scale=1.5)),
    'logits_eos_inf': (['one', 'short'], dict(gen_length=12, block_length=6, steps=12,
                                              logits_eos_inf=True)),
    'defer': (['one', 'infill'], dict(gen_length=12, block_length=6, steps=6,
                                      confidence_eos_eot_inf=True)),
    'defer_hot': (['one', 'infill'], dict(gen_length=12, block_length=6, steps=6,
                                          confidence_eos_eot_inf=True, temperature=1e-9)),
}

# eval_llada.py's suffix_greedy_prediction: (prefix, target) pairs and cfg scales.
GREEDY = {
    'plain': (PROMPTS['plain'], None, 0.0),
    'infill': (PROMPTS['infill'], None, 0.0),
    'cfg': (PROMPTS['short'], None, 1.0),
    'infill_cfg': (PROMPTS['infill'], None, 1.0),  # guidance masks the filled prompt masks too
}
GREEDY_LENGTH = 5

# eval_llada.py's get_loglikelihood: name -> (prefix, target, cfg, mini-batch size, number of
# mini-batches drawn). Targets of 4 tokens with mini-batches of 4: the stratified counts are then
# 1, 2, 3, 4 in every mini-batch, so only the masked subsets are random.
LIKELIHOOD = {
    'plain': (PROMPTS['one'], [3, 17, 29, 8], 0.0, 4, 48),
    'cfg': (PROMPTS['short'], [21, 5, 5, 30], 1.0, 4, 48),
}
# _forward_process's stratified counts: (answer length, mini-batch size); some hit .5 exactly.
COUNTS = [(4, 4), (3, 4), (6, 4), (5, 8), (7, 3), (10, 4)]

# A tokenizer for eval_llada.py and lladax alike: one character per live text id.
CHARS = 'abcdefghijklmnopqrstuvwxyz .,?!\n01234567'
SPECIAL_TOKENS = {'<|startoftext|>': BOS, '<|endoftext|>': EOS, '<|mdm_mask|>': MASK,
                  '<|eot_id|>': EOT}

# _encode_pair: (context, continuation); trailing spaces move to the continuation.
PAIRS = [('the cat sat ', 'on it'), ('the cat sat', ' on it'), ('a b  ', 'c'), ('odd', '')]

# generate_until: name -> (the harness' model arguments, [(context, until strings)]).
UNTIL = {
    'one_block': (dict(gen_length=8, steps=8, block_length=8), [
        ('x y z\n', ['6']),
        ('well, well', ['s', 'j']),
        ('q', ['o']),              # cut inside the text of <|endoftext|>: 'end' is left
    ]),
    'blocks': (dict(gen_length=12, steps=6, block_length=4), [
        ('a<|mdm_mask|>c d e f g', ['\n\n']),  # the prompt holds a mask token
        ('well, well', ['6', '<|mdm_mask|>']),
        ('x y z\n', []),
    ]),
}


def write_tokenizer(path: str) -> str:
  """tokenizer.json: one character per live text id, LLaDA's special tokens at their ids."""
  vocab = {ch: i for i, ch in enumerate(CHARS)}
  vocab.update(SPECIAL_TOKENS)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
  tok.save(path)
  return path


def lladax_model(dtype: str = 'float32'):
  """The same network as a lladax module (weights and compute in `dtype`)."""
  cfg = hf_params.config_from_hf(hf_config(), param_dtype=dtype, dtype=dtype)
  model = model_lib.abstract(cfg)  # shapes only: every parameter is set below
  w = weights()
  for name, shape in model_lib.param_shapes(cfg).items():
    if hf_params.stacked(name):
      value = np.stack([hf_params.to_lladax(name, w[hf_params.hf_name(name, i)], shape[1:])
                        for i in range(shape[0])])
    else:
      value = hf_params.to_lladax(name, w[hf_params.hf_name(name)], shape)
    param = model
    for part in name.split('.'):
      param = getattr(param, part)
    param.value = jnp.asarray(value, model_config.DTYPES[dtype])
  return model
