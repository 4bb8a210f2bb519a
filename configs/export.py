"""Export a lladax model directory as a Hugging Face LLaDA directory that PyTorch loads.

  python -m lladax.main --config configs/export.py --config.checkpoint=/ckpt/lladax-8b-sft \
      --config.export.output=/ckpt/LLaDA-8B-sft-hf --config.export.copy_from=/ckpt/LLaDA-8B-Base

`copy_from` (optional) copies modeling_llada.py, configuration_llada.py and the tokenizer files
of the original checkpoint; `--config.export.dtype=bfloat16` casts a float32 (trained) model.
"""
from lladax import presets
from lladax.hf.export import ExportConfig


def get_config():
  c = presets.base('export')
  c.export = presets.section(ExportConfig)
  return c
