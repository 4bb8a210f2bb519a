"""The describe job: the network's size, FLOPs and RoPE base for a recipe, with no weights needed."""
from __future__ import annotations

from lladax import flops, model_config, rope
from lladax.config import parse

TARGETS = (8192, 16384, 32768, 65536, 131072)


def rope_table(cfg: model_config.ModelConfig, trained_base: float) -> list[str]:
  """LongLLaDA vs diffusion-aware NTK bases for standard target lengths."""
  d, t = cfg.head_dim, cfg.max_sequence_length
  lines = [f'  critical dimension: {rope.critical_dim(trained_base, d, t)} (ntk), '
           f'{rope.critical_dim(trained_base, d, 2 * t)} (diffusion_ntk)',
           f'  {"target":>8}  {"ntk lambda":>10}  {"(rounded)":>9}  {"diffusion lambda":>16}  '
           f'{"diffusion base":>14}']
  for target in TARGETS:
    if target <= t:
      continue
    lam = rope.ntk_lambda(trained_base, d, t, target)
    lam_up = rope.ntk_lambda(trained_base, d, t, target, round_up=True)
    dif = rope.ntk_lambda(trained_base, d, 2 * t, 2 * target)
    lines.append(f'  {target:>8}  {lam:>10.2f}  {lam_up:>9.0f}  {dif:>16.2f}  '
                 f'{dif * trained_base:>14.4g}')
  return lines


def run(config) -> dict:
  recipe = parse(config)
  raw = recipe.model
  cfg = model_config.resolve_rope(raw, recipe.rope)
  rope_cfg = recipe.rope
  seq = recipe.data.seq_len if recipe.has('data') else cfg.max_sequence_length
  fwd = flops.forward_per_token(cfg, seq)
  lines = [
      f'LLaDA: {cfg.num_params():,} parameters ({cfg.n_layers} layers, d_model {cfg.d_model}, '
      f'{cfg.n_heads} heads x {cfg.head_dim}, {cfg.kv_heads} kv heads, mlp {cfg.mlp_hidden_size}, '
      f'vocab {cfg.vocab_size})',
      f'RoPE: rule {rope_cfg.rule}, trained base {raw.rope_theta:.6g} at {cfg.max_sequence_length} '
      f'tokens -> base {cfg.rope_theta:.6g}, position scale {cfg.rope_position_scale:.4g}',
      *rope_table(cfg, raw.rope_theta),
      f'FLOPs per token at {seq} tokens: forward {fwd["total"] / 1e9:.2f} G '
      f'(weights {fwd["weights"] / 1e9:.2f} G, attention {fwd["attention"] / 1e9:.2f} G), '
      f'training {flops.train_per_token(cfg, seq) / 1e9:.2f} G',
  ]
  print('\n'.join(lines))
  return {'num_params': cfg.num_params(), 'rope_theta': cfg.rope_theta, 'flops': fwd}
