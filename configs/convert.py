"""Convert a PyTorch LLaDA checkpoint (Hugging Face directory) into a lladax model directory.

  python -m lladax.main --config configs/convert.py \
      --config.convert.source=/ckpt/LLaDA-8B-Base --config.convert.output=/ckpt/lladax-8b-base

The model's shape, RoPE base and special token ids come from the checkpoint's config.json; the
tokenizer.json is copied beside the parameters so that the generate job finds it:

  python -m lladax.main --config configs/llada8b.py --config.job=generate \
      --config.checkpoint=/ckpt/lladax-8b-base --config.sample.prompt='The capital of France is'
"""
from lladax import presets
from lladax.hf.convert import ConvertConfig


def get_config():
  c = presets.base('convert')
  c.convert = presets.section(ConvertConfig)
  return c
