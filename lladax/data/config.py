"""`config.data`: where the training batches come from and their shape (the sources are read by
lladax/data/simple.py, or by the Grain pipeline of config.pipeline)."""
from __future__ import annotations

import dataclasses

from lladax.config import ConfigError, choice

SOURCES = ('retrieval', 'sft_jsonl', 'text_files', 'pipeline')
# 'answer': LLaDA's SFT, the EOS padding after an answer is answer too (masked, in the loss), so
# the model learns to end its replies. 'ignored': one EOS ends the answer and the rest of the row
# is padding (segment 0: never attended, masked or scored). Use it when rows are long and answers
# short: with 'answer', a 5-token answer in a 256-token row is over 90% EOS, and the model learns
# to predict EOS at every mask before it learns the answer (docs/mini/README.md).
SFT_PADDING = ('answer', 'ignored')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = 'retrieval'   # retrieval | sft_jsonl | text_files | pipeline (the Grain pipeline
                              # of config.pipeline; lladax/train/batches.py)
  path: str = ''              # text_files: a glob ('{stdlib}' expands to Python's library
                              # folder); sft_jsonl: a .jsonl of {"prompt", "answer"} records
  seq_len: int = 64           # tokens per row
  batch_size: int = 32        # rows per step
  n_pairs: int = 4            # retrieval: key-value pairs per record
  max_questions: int = 1      # retrieval: each record asks 1..max_questions keys
  needle: str = ''            # retrieval: a fixed key hidden among the pairs and always the one
                              # asked ('' asks the pairs' own keys)
  sft_padding: str = 'answer'  # retrieval, sft_jsonl: what the EOS padding after an answer is
                               # ('answer' as in LLaDA, or 'ignored'; see SFT_PADDING)

  def __post_init__(self):
    choice(self.source, SOURCES, 'config.data.source')
    choice(self.sft_padding, SFT_PADDING, 'config.data.sft_padding')
    if self.seq_len <= 0 or self.batch_size <= 0:
      raise ConfigError('config.data.seq_len and batch_size must be positive.')
