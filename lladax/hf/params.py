"""The PyTorch (Hugging Face) LLaDA checkpoint format as names, shapes and configs; no file I/O.

A HF LLaDA checkpoint names each tensor `model.transformer.<...>.weight`; linear weights are
PyTorch [out, in], head-major in the output features (feature = head * head_dim + d), so a lladax
kernel is the transpose reshaped, with no q/k permutation (LLaDA uses rotate-half RoPE natively):

  lladax                 HF tensor (per layer i for 'blocks.*')     HF shape -> lladax shape
  wte                    model.transformer.wte.weight               [V, D]      -> [V, D]
  blocks.attn_norm       ...blocks.{i}.attn_norm.weight             [D]         -> [L, D]
  blocks.q_proj          ...blocks.{i}.q_proj.weight                [H*hd, D]   -> [L, D, H, hd]
  blocks.k_proj/v_proj   ...blocks.{i}.k_proj.weight / v_proj       [KH*hd, D]  -> [L, D, KH, hd]
  blocks.attn_out        ...blocks.{i}.attn_out.weight              [D, H*hd]   -> [L, H, hd, D]
  blocks.ff_norm         ...blocks.{i}.ff_norm.weight               [D]         -> [L, D]
  blocks.ff_proj/up_proj ...blocks.{i}.ff_proj.weight / up_proj     [F, D]      -> [L, D, F]
  blocks.ff_out          ...blocks.{i}.ff_out.weight                [D, F]      -> [L, F, D]
  ln_f                   model.transformer.ln_f.weight              [D]         -> [D]
  lm_head                model.transformer.ff_out.weight            [V, D]      -> [D, V]
"""
from __future__ import annotations

import copy

import ml_dtypes
import numpy as np

from lladax import model as model_lib
from lladax.config import ConfigError
from lladax.model_config import ModelConfig

PREFIX = 'model.transformer.'

# safetensors dtype names <-> numpy; bf16 through ml_dtypes, so no torch detour.
SAFETENSORS_DTYPES = {'BF16': np.dtype(ml_dtypes.bfloat16), 'F16': np.dtype(np.float16),
                      'F32': np.dtype(np.float32)}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DTYPE_NAMES = {np.dtype(ml_dtypes.bfloat16): 'bfloat16', np.dtype(np.float16): 'float16',
               np.dtype(np.float32): 'float32'}
TOKENIZER_FILE = 'tokenizer.json'

# LLaDA-8B's config.json (LLADA.md section 1): the template an export starts from when the
# lladax checkpoint does not carry the original config.json.
LLADA_8B_CONFIG = {
    'activation_type': 'silu', 'alibi': False, 'alibi_bias_max': 8.0,
    'architectures': ['LLaDAModelLM'], 'attention_dropout': 0.0, 'attention_layer_norm': False,
    'attention_layer_norm_with_affine': True,
    'auto_map': {'AutoConfig': 'configuration_llada.LLaDAConfig',
                 'AutoModelForCausalLM': 'modeling_llada.LLaDAModelLM',
                 'AutoModel': 'modeling_llada.LLaDAModelLM'},
    'bias_for_layer_norm': False, 'block_group_size': 1, 'block_type': 'llama', 'd_model': 4096,
    'embedding_dropout': 0.0, 'embedding_size': 126464, 'eos_token_id': 126081,
    'flash_attention': False, 'include_bias': False, 'include_qkv_bias': False,
    'init_cutoff_factor': None, 'init_device': 'meta', 'init_fn': 'mitchell', 'init_std': 0.02,
    'input_emb_norm': False, 'layer_norm_type': 'rms', 'layer_norm_with_affine': True,
    'mask_token_id': 126336, 'max_sequence_length': 4096, 'mlp_hidden_size': 12288,
    'mlp_ratio': 4, 'model_type': 'llada', 'multi_query_attention': None, 'n_heads': 32,
    'n_kv_heads': 32, 'n_layers': 32, 'pad_token_id': 126081, 'precision': 'amp_bf16',
    'residual_dropout': 0.0, 'rms_norm_eps': 1e-05, 'rope': True, 'rope_full_precision': True,
    'rope_theta': 500000.0, 'scale_logits': False, 'torch_dtype': 'bfloat16',
    'transformers_version': '4.46.3', 'use_cache': False, 'vocab_size': 126464,
    'weight_tying': False,
}

# Fields that change the architecture, with the only value lladax implements. `required` fields
# must be present: LLaDA's config class defaults them to OLMo values lladax does not implement
# (sequential blocks, swiglu, LayerNorm, biases, no RoPE), so an absent one is not llama-LLaDA.
_REQUIRED_ARCH = {'block_type': 'llama', 'activation_type': 'silu', 'layer_norm_type': 'rms',
                  'rope': True, 'include_bias': False, 'alibi': False}
_OPTIONAL_ARCH = {'include_qkv_bias': False, 'bias_for_layer_norm': (False, None),
                  'layer_norm_with_affine': True, 'attention_layer_norm': False,
                  'input_emb_norm': False, 'scale_logits': False, 'clip_qkv': None,
                  'block_group_size': 1, 'rope_full_precision': True, 'rope_scaling': None}
_WHY = {
    'block_type': 'only LLaDALlamaBlock (separate q/k/v and gate/up projections) is ported; '
                  "'sequential' fuses q/k/v into att_proj",
    'activation_type': "only the SiLU gate with a separate up_proj is ported; 'swiglu' fuses "
                       'gate and up into ff_proj',
    'layer_norm_type': 'only RMSNorm is ported',
    'rope': 'lladax always applies RoPE',
    'include_bias': 'lladax linear layers have no biases',
    'include_qkv_bias': 'lladax q/k/v projections have no biases',
    'bias_for_layer_norm': 'lladax norms have no bias',
    'layer_norm_with_affine': 'lladax norms always have a weight',
    'alibi': 'ALiBi is not ported',
    'attention_layer_norm': 'q/k layer norms are not ported',
    'input_emb_norm': 'an embedding norm is not ported',
    'scale_logits': 'logit scaling is not ported',
    'clip_qkv': 'q/k/v clipping is not ported',
    'block_group_size': 'grouped blocks name their tensors differently',
    'rope_full_precision': 'lladax always rotates in float32',
    'rope_scaling': 'LLaDA has no rope_scaling; set rope_theta (or a lladax RoPE rule) instead',
}
_REQUIRED_NUMBERS = ('d_model', 'n_layers', 'n_heads', 'max_sequence_length', 'rope_theta',
                     'vocab_size', 'weight_tying')


def _check_architecture(hf: dict, where: str) -> None:
  if hf.get('model_type', 'llada') != 'llada':
    raise ConfigError(f"{where}: model_type {hf['model_type']!r} is not 'llada' (LLaDA-MoE and "
                      'other families need their own port); convert a LLaDA-8B-style checkpoint.')
  for field, want in {**_REQUIRED_ARCH, **_OPTIONAL_ARCH}.items():
    if field not in hf:
      if field in _REQUIRED_ARCH:
        raise ConfigError(f'{where} does not set {field}; lladax converts only {field}={want!r} '
                          f'LLaDA checkpoints, so add "{field}": {want!r} to config.json if '
                          'that is what this checkpoint is.')
      continue
    allowed = want if isinstance(want, tuple) else (want,)
    if hf[field] not in allowed:
      raise ConfigError(f'{where}: {field}={hf[field]!r} is not supported ({_WHY[field]}); '
                        f'only {field}={allowed[0]!r} checkpoints can be converted.')
  for field in _REQUIRED_NUMBERS:
    if hf.get(field) is None:
      raise ConfigError(f'{where} does not set {field}; add it to config.json (LLaDA-8B: '
                        f'{LLADA_8B_CONFIG[field]!r}).')


def _token_id(hf: dict, field: str, tokenizer, token: str | None, where: str,
              required: bool) -> int | None:
  """An id from config.json, else the id of `token` in the checkpoint's tokenizer."""
  value = hf.get(field)
  if value is None and tokenizer is not None and token is not None:
    value = tokenizer.token_to_id(token)
  if value is None and required:
    raise ConfigError(f'{where} has no {field} and the tokenizer has no {token!r} token; add '
                      f'"{field}" to config.json.')
  return value


def config_from_hf(hf: dict, *, param_dtype: str, dtype: str, tokenizer=None,
                   where: str = 'config.json') -> ModelConfig:
  """The ModelConfig of a HF LLaDA config.json; ConfigError for anything lladax does not port.

  Special ids come from config.json (mask, eos, pad, and bos if present); BOS and EoT otherwise
  from `tokenizer` (an HFTokenizer) by their LLaDA token strings, never from hard-coded numbers.
  """
  _check_architecture(hf, where)
  vocab = hf['vocab_size']
  rows = hf.get('embedding_size') or vocab
  if vocab > rows:
    raise ConfigError(f'{where}: vocab_size={vocab} exceeds embedding_size={rows}; the embedding '
                      'must have a row per token, so fix embedding_size.')
  if hf.get('n_kv_heads') is not None:
    kv_heads = hf['n_kv_heads']
  else:
    kv_heads = 1 if hf.get('multi_query_attention') else hf['n_heads']
  mlp = hf.get('mlp_hidden_size') or hf.get('mlp_ratio', 4) * hf['d_model']
  eos = _token_id(hf, 'eos_token_id', tokenizer, '<|endoftext|>', where, True)
  pad = hf.get('pad_token_id')
  try:
    return ModelConfig(
        vocab_size=rows, d_model=hf['d_model'], n_layers=hf['n_layers'], n_heads=hf['n_heads'],
        n_kv_heads=kv_heads, mlp_hidden_size=mlp,
        max_sequence_length=hf['max_sequence_length'], rope_theta=float(hf['rope_theta']),
        rms_norm_eps=float(hf.get('rms_norm_eps', 1e-5)), weight_tying=bool(hf['weight_tying']),
        mask_token_id=_token_id(hf, 'mask_token_id', tokenizer, '<|mdm_mask|>', where, True),
        eos_token_id=eos, pad_token_id=eos if pad is None else pad,
        bos_token_id=_token_id(hf, 'bos_token_id', tokenizer, '<|startoftext|>', where, False),
        eot_token_id=_token_id(hf, 'eot_token_id', tokenizer, '<|eot_id|>', where, False),
        param_dtype=param_dtype, dtype=dtype)
  except ConfigError as e:
    raise ConfigError(f'{where} gives an invalid model: {e}') from None


def config_to_hf(cfg: ModelConfig, torch_dtype: str, template: dict | None = None) -> dict:
  """A config.json for `cfg`: `template` (the original config.json) with lladax's values."""
  if cfg.rope_position_scale != 1.0:
    raise ConfigError(f'this model interpolates positions (rope_position_scale='
                      f'{cfg.rope_position_scale}), which LLaDA\'s PyTorch code cannot express; '
                      "export a model that uses a RoPE base rule ('ntk', 'diffusion_ntk', "
                      "'theta').")
  hf = copy.deepcopy(template if template is not None else LLADA_8B_CONFIG)
  vocab = hf.get('vocab_size')
  hf.update(
      d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
      mlp_hidden_size=cfg.mlp_hidden_size, embedding_size=cfg.vocab_size,
      # HF's vocab_size counts real tokens (<= embedding rows); keep it when it still fits.
      vocab_size=vocab if vocab is not None and vocab <= cfg.vocab_size else cfg.vocab_size,
      max_sequence_length=cfg.max_sequence_length, rope_theta=cfg.rope_theta,
      rms_norm_eps=cfg.rms_norm_eps, weight_tying=cfg.weight_tying,
      mask_token_id=cfg.mask_token_id, eos_token_id=cfg.eos_token_id,
      pad_token_id=cfg.pad_token_id, torch_dtype=torch_dtype)
  if hf.get('multi_query_attention') and cfg.kv_heads != 1:
    hf['multi_query_attention'] = None
  if 'bos_token_id' in hf or (template is None and cfg.bos_token_id is not None):
    hf['bos_token_id'] = cfg.bos_token_id
  return hf



def stacked(name: str) -> bool:
  return name.startswith('blocks.')


def hf_name(name: str, layer: int | None = None) -> str:
  """The HF tensor holding lladax parameter `name` (layer `layer` of a stacked one)."""
  if stacked(name):
    return f'{PREFIX}blocks.{layer}.{name[len("blocks."):]}.weight'
  return PREFIX + {'wte': 'wte', 'ln_f': 'ln_f', 'lm_head': 'ff_out'}[name] + '.weight'


def hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape for lladax parameter `name` of (stacked) shape `shape`."""
  layer = shape[1:] if stacked(name) else shape
  if name == 'wte' or len(layer) == 1:
    return tuple(layer)
  # A linear kernel [in..., out...] is PyTorch's [out, in] weight transposed; the head split
  # (q/k/v: [D, H, hd]; attn_out: [H, hd, D]) flattens head-major.
  split = 2 if name == 'blocks.attn_out' else 1
  return (int(np.prod(layer[split:])), int(np.prod(layer[:split])))


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF tensor a checkpoint for `cfg` must hold, with its shape."""
  out = {}
  for name, shape in model_lib.param_shapes(cfg).items():
    layers = range(shape[0]) if stacked(name) else [None]
    for i in layers:
      out[hf_name(name, i)] = hf_shape(name, shape)
  return out


def to_lladax(name: str, w: np.ndarray, layer_shape: tuple[int, ...]) -> np.ndarray:
  """One HF tensor -> its lladax (per-layer) value; a contiguous copy when a transpose is needed."""
  if name == 'wte' or w.ndim == 1:
    return w.reshape(layer_shape)
  return np.ascontiguousarray(w.T).reshape(layer_shape)


def to_hf(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Inverse of to_lladax: a lladax (per-layer) value -> the HF tensor of shape `shape`."""
  if name == 'wte' or len(shape) == 1:
    return value.reshape(shape)
  return np.ascontiguousarray(value.reshape(shape[::-1]).T)
