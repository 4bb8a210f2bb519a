"""The network's shape and numerics as one frozen value, built from `config.model` and `config.rope`."""
from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp

from lladax import rope as rope_lib
from lladax.attention import KERNELS, check_options
from lladax.config import ConfigError, check_types, choice

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
REMAT_POLICIES = ('none', 'full', 'minimal', 'save_qkv_proj', 'save_qkv_context',
                  'save_attention', 'save_qkv_attention')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """LLaDA's hyper-parameters (names follow the Hugging Face config.json where one exists)."""
  vocab_size: int = 126464          # embedding rows; LLaDA pads 126349 real tokens to 988*128
  d_model: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int | None = None     # None: plain multi-head attention (LLaDA); fewer: GQA
  mlp_hidden_size: int = 12288
  max_sequence_length: int = 4096   # the length the weights were trained at (T_train for RoPE rules)
  rope_theta: float = 500000.0      # the base the network uses (after any scaling rule)
  rope_position_scale: float = 1.0  # < 1 only for position interpolation ('linear' rule)
  rms_norm_eps: float = 1e-5
  weight_tying: bool = False        # LM head shares the embedding matrix
  mask_token_id: int = 126336
  eos_token_id: int = 126081
  pad_token_id: int = 126081
  bos_token_id: int | None = 126080
  eot_token_id: int | None = 126348
  param_dtype: str = 'float32'      # master weights
  dtype: str = 'bfloat16'           # activations and matmul inputs
  remat_policy: str = 'full'        # what the scanned block keeps for the backward pass
  scan_layers: bool = True          # False unrolls the layers (for cost analysis cross-checks)
  attention_kernel: str = 'auto'   # by backend and mesh (lladax/attention/auto.py)
  attention_options: tuple[str, ...] = ()  # the kernel's settings as 'name=value', e.g.
                                           # ('block_q=1024', 'step_kernel=splash') for ring

  def __post_init__(self):
    check_types(self, 'config.model')
    for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'mlp_hidden_size',
                 'max_sequence_length'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'config.model.{name} must be positive, got {getattr(self, name)}.')
    if self.d_model % self.n_heads:
      raise ConfigError(f'config.model.d_model={self.d_model} is not divisible by '
                        f'n_heads={self.n_heads}; pick sizes with an integer head dimension.')
    if self.head_dim % 2:
      raise ConfigError(f'head dimension {self.head_dim} is odd; RoPE needs an even one.')
    if self.n_heads % self.kv_heads:
      raise ConfigError(f'config.model.n_heads={self.n_heads} is not a multiple of '
                        f'n_kv_heads={self.kv_heads}.')
    for name in ('mask_token_id', 'eos_token_id', 'pad_token_id', 'bos_token_id', 'eot_token_id'):
      value = getattr(self, name)
      if value is not None and not 0 <= value < self.vocab_size:
        raise ConfigError(f'config.model.{name}={value} is outside the vocabulary '
                          f'[0, {self.vocab_size}); set it to a valid id or grow vocab_size.')
    if self.mask_token_id == self.pad_token_id:
      raise ConfigError('config.model.mask_token_id equals pad_token_id; the sampler cannot tell '
                        'padding from tokens still to be decoded.')
    choice(self.param_dtype, DTYPES, 'config.model.param_dtype')
    choice(self.dtype, DTYPES, 'config.model.dtype')
    choice(self.remat_policy, REMAT_POLICIES, 'config.model.remat_policy')
    choice(self.attention_kernel, tuple(KERNELS), 'config.model.attention_kernel')
    for option in self.attention_options:
      if '=' not in option:
        raise ConfigError(f"config.model.attention_options entry {option!r} is not 'name=value'.")
    check_options(self.attention_kernel, self.attention_kwargs)

  @property
  def attention_kwargs(self) -> dict:
    """attention_options as keyword arguments: integers and booleans parsed, the rest strings."""
    out = {}
    for option in self.attention_options:
      name, value = option.split('=', 1)
      if value.lstrip('-').isdigit():
        value = int(value)
      elif value in ('True', 'False', 'true', 'false'):
        value = value.lower() == 'true'
      out[name.strip()] = value
    return out

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def rope(self) -> rope_lib.RopeParams:
    return rope_lib.RopeParams(self.rope_theta, self.rope_position_scale)

  def num_params(self) -> int:
    d, f, v, l = self.d_model, self.mlp_hidden_size, self.vocab_size, self.n_layers
    attn = d * self.n_heads * self.head_dim * 2 + d * self.kv_heads * self.head_dim * 2
    block = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.weight_tying else 2) + l * block + d


_ROPE_POSITIVE = {'target_length': 'the context length to extend to, in tokens',
                  'train_length': 'the trained context length, in tokens',
                  'd_crit': 'a number of rotary dimensions', 'theta': 'a RoPE base'}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """How the RoPE base is chosen for a target length (see lladax/rope.py for the formulas)."""
  rule: str = 'none'                # none | ntk | diffusion_ntk | linear | theta
  target_length: int | None = None  # T_target for ntk / diffusion_ntk / linear
  train_length: int | None = None   # T_train; None takes model.max_sequence_length
  d_crit: int | None = None         # override the analytic critical dimension (UltraLLaDA: 73)
  round_lambda: bool = False        # round lambda up to an integer, as LongLLaDA did
  theta: float | None = None        # explicit base for the 'theta' rule

  def __post_init__(self):
    check_types(self, 'config.rope')
    choice(self.rule, rope_lib.RULES, 'config.rope.rule')
    for name, what in _ROPE_POSITIVE.items():
      value = getattr(self, name)
      if value is not None and not value > 0:   # `not >` refuses nan too
        raise ConfigError(f'config.rope.{name}={value} must be positive ({what}); fix it or leave '
                          'it unset.')
    if self.rule in ('ntk', 'diffusion_ntk', 'linear') and not self.target_length:
      raise ConfigError(f'config.rope.rule={self.rule!r} needs config.rope.target_length '
                        '(the context length to extend to, in tokens).')
    if self.rule == 'theta' and not self.theta:
      raise ConfigError("config.rope.rule='theta' needs a positive config.rope.theta.")


def resolve_rope(model: ModelConfig, rope: RopeConfig) -> ModelConfig:
  """Applies the scaling rule to the trained base, returning the config the network runs with."""
  params = rope_lib.resolve(
      rope.rule, model.rope_theta, model.head_dim,
      rope.train_length or model.max_sequence_length, rope.target_length, rope.d_crit,
      rope.round_lambda, rope.theta)
  if rope.rule != 'none':
    logging.info('RoPE rule %s: base %.6g -> %.6g (x%.4g), position scale %.4g', rope.rule,
                 model.rope_theta, params.theta, params.theta / model.rope_theta,
                 params.position_scale)
  return dataclasses.replace(model, rope_theta=params.theta,
                             rope_position_scale=model.rope_position_scale * params.position_scale)


# Fields a recipe may change on a saved model: how it computes, never its shape.
COMPUTE_FIELDS = ('param_dtype', 'dtype', 'remat_policy', 'scan_layers', 'attention_kernel',
                  'attention_options')


def compute_overrides(recipe: ModelConfig, saved: ModelConfig) -> dict:
  """How the recipe asks a saved model to run (load_model overrides); the shape always comes
  from the checkpoint. Attention options belong to a kernel: the recipe's replace the
  checkpoint's when it sets some or picks another kernel, and are kept otherwise."""
  out = {name: getattr(recipe, name) for name in COMPUTE_FIELDS}
  if not recipe.attention_options and recipe.attention_kernel == saved.attention_kernel:
    del out['attention_options']
  return out

