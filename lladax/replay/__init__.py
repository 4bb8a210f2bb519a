"""The miniature replay of LongLLaDA and UltraLLaDA (configs/mini/ultra.py, the `replay` job)."""
