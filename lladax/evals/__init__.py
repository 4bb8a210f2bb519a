"""Long-context evaluation jobs: needle in a haystack, perplexity against length, RULER, LongBench.

Each job reads a checkpoint (`config.checkpoint`) and local files only, writes its results as JSON
(with the checkpoint, the RoPE base and the sampler settings used) into `config.workdir`, and
resumes from the cells a killed run had finished. Shared pieces: loading.py (the checkpoint under
the recipe, or an oracle), model_calls.py (batched sampling and scoring), eval_settings.py
(config.eval, sampler settings, deviations), results.py (the resumable store, output files),
metrics.py, haystack.py, plots.py, oracles.py.
"""
