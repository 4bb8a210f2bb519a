"""How fast one host packs tokens, beside how fast the UltraLLaDA recipe consumes them per host.

  python -m lladax.main --config configs/data_bench.py

For each tokenizer kind (bytes; a sentencepiece model and a Hugging Face BPE tokenizer.json, both
trained here on local text in a temporary folder) and each row length, the pipeline configured in
config.pipeline runs for config.bench.seconds after its first batch; the rate is real (packed)
tokens per second from this one process. The demand side is analytic: training FLOPs per token
(lladax.flops: 3 x (2 N + 4 T d L), N the parameters in matmuls including the LM head, for
LLaDA-8B at T tokens per row; bidirectional attention, nothing halved), at
an assumed MFU of the chip's peak, times the chips on a host.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import tempfile
import time

from lladax import files, flops as flops_lib
from lladax.config import ConfigError, choice, parse
from lladax.data import pipeline, sources, tokenizers
from lladax.model_config import ModelConfig

LLADA_8B = ModelConfig()
KINDS = ('bytes', 'sentencepiece', 'hf')   # the tokenizer kinds the benchmark can build


def train_text(pattern: str, max_bytes: int) -> list[str]:
  """Lines of local text, up to max_bytes, for training the benchmark's tokenizers."""
  lines, size = [], 0
  for path in sorted(glob.glob(sources.expand(pattern), recursive=True)):
    with open(path, encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.strip():
          lines.append(line)
          size += len(line)
    if size >= max_bytes:
      break
  if not lines:
    raise ConfigError(f'config.bench.train_files={pattern!r} matches no text; point it at local '
                      'text files.')
  return lines


def make_tokenizer(kind: str, folder: str, lines: list[str], vocab_size: int):
  """(tokenizer, special ids) for a kind; sentencepiece and BPE are trained on `lines` first."""
  if kind == 'bytes':
    b = tokenizers.ByteTokenizer
    return tokenizers.ByteTokenizer(), dict(eos_id=b.EOS, bos_id=b.BOS, pad_id=b.PAD)
  text = os.path.join(folder, 'train.txt')
  if not os.path.exists(text):
    with open(text, 'w', encoding='utf-8') as f:
      f.writelines(lines)
  if kind == 'sentencepiece':
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    prefix = os.path.join(folder, 'sp')
    # Identity normalisation, byte fallback and a newline piece keep source text lossless.
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, vocab_size=vocab_size, model_type='bpe',
        character_coverage=1.0, normalization_rule_name='identity',
        remove_extra_whitespaces=False, byte_fallback=True, user_defined_symbols=['\n'],
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=2, minloglevel=2)
    path = prefix + '.model'
  else:
    # pylint: disable=import-outside-toplevel
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE(unk_token='<unk>'))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=['<unk>', '<bos>', '<eos>', '<pad>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(lines, trainer=trainer)
    path = os.path.join(folder, 'tokenizer.json')
    hf.save(path)
  tok = tokenizers.load(tokenizers.TokenizerConfig(kind=kind, path=path))
  return tok, dict(eos_id=2, bos_id=1, pad_id=3)


def demand(b: BenchConfig, seq_len: int) -> dict:
  """Tokens per second the recipe consumes, per chip and per host, and the step time it implies."""
  flops = flops_lib.train_per_token(LLADA_8B, seq_len)
  per_chip = b.peak_flops * b.mfu / flops
  return {'flops_per_token': flops, 'per_chip': per_chip, 'per_host': per_chip * b.chips_per_host,
          'step_seconds': b.tokens_per_step / (per_chip * b.chips)}


def measure(cfg: pipeline.PipelineConfig, tok, ids: dict, seconds: float) -> dict:
  with pipeline.build(cfg, tok, **ids) as p:
    start = time.perf_counter()
    next(p)   # starts the reader threads and fills the first row
    first = time.perf_counter() - start
    before = p.stats()['tokens_packed']
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
      try:
        next(p)
      except StopIteration:
        break
    elapsed = time.perf_counter() - start
    s = p.stats()
  return {'tokens_per_second': (s['tokens_packed'] - before) / elapsed, 'first_batch_s': first,
          'packing_efficiency': s['packing_efficiency'],
          'documents_per_row': s['documents_per_row'], 'rows': s['rows']}


def run(config) -> list[dict]:
  recipe = parse(config)
  pcfg = recipe.pipeline
  b = recipe.bench
  for kind in b.tokenizers:
    choice(kind, KINDS, 'config.bench.tokenizers[]')
  print(f'data_bench: {b.chips // b.chips_per_host} hosts x {b.chips_per_host} chips at '
        f'{b.peak_flops / 1e12:.0f} TFLOP/s and {100 * b.mfu:.0f}% MFU; LLaDA-8B '
        f'({flops_lib.matmul_params(LLADA_8B) / 1e9:.2f}B parameters in matmuls), '
        f'{b.tokens_per_step:,} tokens per step; '
        f'packing={pcfg.packing}, fit={pcfg.fit}, {pcfg.read_threads} read threads, one process',
        flush=True)
  header = (f'{"seq_len":>8} {"tokenizer":>13} {"packed tok/s/host":>18} {"docs/row":>9} '
            f'{"efficiency":>10} {"demand tok/s/host":>18} {"step s":>7} {"headroom":>9}')
  results = []
  with tempfile.TemporaryDirectory() as folder:
    lines = None
    for kind in b.tokenizers:
      if kind != 'bytes' and lines is None:
        lines = train_text(b.train_files, b.train_bytes)
      start = time.perf_counter()
      tok, ids = make_tokenizer(kind, folder, lines or [], b.vocab_size)
      logging.info('%s tokenizer ready in %.1f s (vocabulary %d)', kind,
                   time.perf_counter() - start, tok.vocab_size)
      for seq_len in b.seq_lens:
        got = measure(dataclasses.replace(pcfg, seq_len=seq_len), tok, ids, b.seconds)
        need = demand(b, seq_len)
        row = dict(seq_len=seq_len, tokenizer=kind, **got, demand_per_host=need['per_host'],
                   step_seconds=need['step_seconds'],
                   headroom=got['tokens_per_second'] / need['per_host'])
        if not results:
          print(header, flush=True)
        results.append(row)
        print(f'{seq_len:>8} {kind:>13} {row["tokens_per_second"]:>18,.0f} '
              f'{row["documents_per_row"]:>9.1f} {100 * row["packing_efficiency"]:>9.1f}% '
              f'{row["demand_per_host"]:>18,.0f} {row["step_seconds"]:>7.1f} '
              f'{row["headroom"]:>8.0f}x', flush=True)
  if recipe.workdir:
    path = files.write_json(os.path.join(recipe.workdir, 'data_bench.json'),
                            {'bench': dataclasses.asdict(b), 'results': results}, indent=1)
    print(f'wrote {path}')
  return results


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  tokenizers: tuple[str, ...] = ('bytes', 'sentencepiece', 'hf')  # kinds to measure
  seq_lens: tuple[int, ...] = (65536, 131072)   # row lengths to measure
  seconds: float = 3.0            # measured per configuration, after the first batch
  train_files: str = '{stdlib}/**/*.py'  # local text the sentencepiece / BPE models learn from
  train_bytes: int = 2_000_000    # how much of it
  vocab_size: int = 8000          # of the trained sentencepiece and BPE models
  # The consumer: LLaDA-8B post-trained as UltraLLaDA, on a v5p-128 (64 chips, 16 hosts of 4).
  tokens_per_step: int = 4_194_304  # ~4M tokens per optimizer step
  chips: int = 64
  chips_per_host: int = 4
  peak_flops: float = 459e12      # bf16 FLOP/s per v5p chip
  mfu: float = 0.4                # assumed model FLOPs utilisation
