"""lladax: LLaDA, the masked-diffusion language model, in JAX/Flax, extended to long contexts."""
__version__ = '0.1.0'
