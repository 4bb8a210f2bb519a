"""Hugging Face LLaDA checkpoints: the parameter mapping, conversion into lladax and export out of it."""
