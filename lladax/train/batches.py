"""Training batches with a state that a checkpoint can hold, so a resumed run sees exactly the
batches an uninterrupted one would have seen.

  config.data.source = 'pipeline'   the Grain pipeline of `config.pipeline` (pods, real corpora);
                                    its iterator state is saved as is
  config.data.source = 'retrieval' | 'sft_jsonl' | 'text_files'
                                    the small single-host generators of lladax/data/simple.py
                                    (demo and tests); their state is the number of batches drawn,
                                    and a restore replays that many from the seed
Every batch has tokens, positions, segment_ids and prompt_mask [B, T] for this process's rows.
"""
from __future__ import annotations

import jax
import numpy as np

from lladax.config import ConfigError, Recipe
from lladax.data import config as data_config, shards, simple


class Replayed:
  """A deterministic generator whose state is how many batches it has given."""

  def __init__(self, make):
    self._make = make
    self._it = make()
    self.drawn = 0

  def __next__(self) -> dict:
    batch = next(self._it)
    self.drawn += 1  # after the draw: one interrupted by SIGTERM is not counted
    return batch

  def get_state(self) -> dict:
    return {'drawn': self.drawn}

  def set_state(self, state: dict) -> None:
    drawn = state.get('drawn') if isinstance(state, dict) else None
    if isinstance(drawn, bool) or not isinstance(drawn, int) or drawn < 0:
      raise invalid_state(state, '"drawn", the number of batches given')
    self._it = self._make()
    for _ in range(state['drawn']):
      next(self._it)
    self.drawn = state['drawn']

  def close(self) -> None:
    pass


class FromPipeline:
  """The Grain pipeline's batches, with the prompt mask the diffusion step expects."""

  def __init__(self, pipe):
    self._pipe = pipe

  def __next__(self) -> dict:
    batch = next(self._pipe)
    return {'tokens': batch['tokens'], 'positions': batch['positions'],
            'segment_ids': batch['segment_ids'],
            'prompt_mask': np.zeros(batch['tokens'].shape, bool)}

  def get_state(self) -> dict:
    return self._pipe.get_state()

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or not ({'grain', 'settings', 'packed'} <= set(state) or
                                           isinstance(state.get('shards'), dict)):
      raise invalid_state(state, "the Grain pipeline's 'shards' (or 'grain', 'settings' and "
                          "'packed')")
    self._pipe.set_state(state)

  def close(self) -> None:
    self._pipe.close()


def invalid_state(state, needs: str) -> ConfigError:
  # An empty or foreign state would restart or garble the stream without a word.
  return ConfigError(f'the saved data-iterator state {str(state)[:80]} is not one this data '
                     f'source wrote (it needs {needs}); resume from a checkpoint this recipe '
                     'wrote, or start afresh in a new config.workdir.')


def open_batches(recipe: Recipe, dcfg: data_config.DataConfig, tokenizer, mcfg, *, rows: int,
                 process_index: int | None = None, process_count: int | None = None,
                 held_out: bool = False):
  """This process's batches of `rows` rows (its share of the global batch).

  held_out: validation batches: `config.eval_pipeline` for the Grain pipeline (held-out sources
  the user names), or the generators drawn from another seed.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if dcfg.source == 'pipeline':
    section = 'eval_pipeline' if held_out else 'pipeline'
    if held_out and not recipe.has(section):
      raise ConfigError('config.train.eval_every needs config.eval_pipeline: held-out sources '
                        'for the validation loss (a PipelineConfig section like config.pipeline).')
    if not recipe.has(section):
      # Without one, PipelineConfig's defaults (131072 tokens a row) would be reported as if
      # the recipe had set them.
      raise ConfigError(f"config.data.source='pipeline' needs a config.{section} section (its "
                        f'sources and packing); add c.{section} = presets.section('
                        'presets.pipeline_config(), sources=(...), seq_len=...) to the recipe, '
                        'or choose another config.data.source.')
    pcfg = getattr(recipe, section)
    if pcfg.seq_len != dcfg.seq_len:
      raise ConfigError(f'config.{section}.seq_len={pcfg.seq_len} (set in the recipe) differs '
                        f'from config.data.seq_len={dcfg.seq_len}; set them equal.')
    return FromPipeline(shards.open_streams(
        pcfg, tokenizer, rows=rows, index=index, count=count, eos_id=mcfg.eos_token_id,
        bos_id=mcfg.bos_token_id, pad_id=mcfg.pad_token_id))
  if count > 1:
    raise ConfigError(f"config.data.source={dcfg.source!r} is a single-host generator; use "
                      "config.data.source='pipeline' with config.pipeline for multi-host runs.")
  local = data_config.DataConfig(**{**dcfg.__dict__, 'batch_size': rows})
  seed = recipe.seed + (1_000_003 if held_out else 0)
  return Replayed(lambda: simple.batches(local, tokenizer, seed, eos_id=mcfg.eos_token_id,
                                         bos_id=mcfg.bos_token_id))
