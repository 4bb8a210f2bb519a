"""Can the miniature's base model learn the needle task when only the answer is noised? A test.

  python docs/mini/retrieval_sft.py --base /tmp/mini/pretrain/model --steps 700
  python docs/mini/retrieval_sft.py --base /tmp/mini/pretrain/model --steps 1000 --digits 2
  python docs/mini/retrieval_sft.py --base /tmp/mini/pretrain/model --steps 300 --digits 1

Fine-tunes a pre-trained replay model (configs/mini/ultra.py's pretrain/model folder) on short
retrieval records with LLaDA's SFT objective: the prompt is never masked and only the answer
(the value, its period and one EOS) is noised and scored, with no EOS padding in the loss
(config.data.sft_padding='ignored'). Records use the replay's own needles and NIAH template on
training prose, with a haystack of 0..--haystack bytes around the needle, so attention has little
to search. Every --every steps it prints the replay probe's retrieval scores
(lladax/replay/probe.py) on 64 held-out records of this shape and 64 with 60..110-byte haystacks:
digit accuracy (chance 10%), whole values, and how often a guessed digit is one of the value's
digits in any slot. The last tells "finds the needle" apart from "puts its digits in order"
(docs/mini/README.md). "left to right" gives digits and whole values again with the digits
before each one shown, as a sampler decoding left to right would have them.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from lladax import diffusion, saved_model
from lladax.data import config as data_config, simple, tokenizers
from lladax.replay import corpus, probe
from lladax.train import optimizer, step as train_step

TOK = tokenizers.ByteTokenizer()
HELD_OUT = 64


def record(rng: np.random.Generator, prose: list[str], needle: dict, shortest: int,
           longest: int) -> tuple[str, str]:
  """(prompt, answer): the needle at a random point of a shortest..longest-byte prose excerpt,
  then the replay's question and answer stem; the answer is the value and a period."""
  doc = prose[int(rng.integers(len(prose)))]
  n = int(rng.integers(shortest, longest + 1))
  start = int(rng.integers(0, max(1, len(doc) - n)))
  hay = doc[start:start + n]
  cut = int(rng.integers(0, len(hay) + 1))
  context = corpus.SEPARATOR.join((hay[:cut], needle['needle'], hay[cut:]))
  prompt = corpus.TEMPLATE.format(context=context, question=needle['question'],
                                  stem=needle['stem'])
  return prompt, needle['answer'] + '.'


def sft_row(prompt: str, answer: str, width: int) -> tuple[np.ndarray, ...]:
  """lladax's SFT row (tokens, prompt mask, segment ids) with sft_padding='ignored': the answer
  and one EOS are noised and scored, the padding after them is segment 0."""
  cfg = data_config.DataConfig(source='sft_jsonl', seq_len=width, sft_padding='ignored')
  return simple.sft_row([(prompt, False), (answer, True)], TOK, cfg, TOK.EOS, TOK.BOS,
                        where='a record of this script (lower --haystack)')


def probe_rows(records: list[tuple[str, str]]) -> tuple[list, list]:
  """The replay probe's rows: BOS, prompt, value, period; the value's digits masked."""
  rows, masks = [], []
  for prompt, answer in records:
    row = [TOK.BOS] + TOK.encode(prompt + answer)
    mask = np.zeros(len(row), bool)
    mask[len(row) - len(answer):len(row) - 1] = True
    rows.append(row)
    masks.append(mask)
  return rows, masks


def main(argv=None) -> list[tuple[int, dict, dict]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--base', required=True, help='a replay pretrain/model folder')
  parser.add_argument('--steps', type=int, default=800)
  parser.add_argument('--haystack', type=int, default=16, help='most prose bytes per record')
  parser.add_argument('--digits', type=int, default=4)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--every', type=int, default=50)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  model, _ = saved_model.load_model(args.base)
  graph, params = nnx.split(model)
  mask_id = model.cfg.mask_token_id
  prose = corpus.prose().train
  rng = np.random.default_rng(args.seed)
  needles = corpus.needles(args.seed, 4096, args.digits)
  draw = lambda lo, hi: record(rng, prose, needles[int(rng.integers(len(needles)))], lo, hi)
  short = [draw(0, args.haystack) for _ in range(HELD_OUT)]
  longer = [draw(60, 110) for _ in range(HELD_OUT)]
  # Rows fit the longest record any needle can make with a full haystack (BOS and EOS included).
  width = max(len(TOK.encode(''.join(record(np.random.default_rng(0), ['x' * args.haystack], n,
                                            args.haystack, args.haystack)))) + 2
              for n in needles)

  tx = optimizer.adamw(optimizer.OptimConfig(learning_rate=args.lr, weight_decay=0.0))
  opt_state = tx.init(params)
  step = jax.jit(train_step.update_fn(graph, tx, mask_id=mask_id, eps=diffusion.EPS, sft=True))

  logits_fn = jax.jit(lambda p, t, pos, seg: nnx.merge(graph, p)(t, pos, seg))
  sets = [probe_rows(short), probe_rows(longer)]

  def scores(params):
    fn = lambda t, pos, seg: logits_fn(params, t, pos, seg)
    out = []
    for rows, masks in sets:
      s = probe.retrieval_scores(probe.masked_predictions(fn, rows, masks, mask_id), rows, masks)
      in_order = probe.retrieval_scores(
          probe.left_to_right_predictions(fn, rows, masks, mask_id), rows, masks)
      s.update(left_to_right_digits=in_order['retrieval_digit_accuracy'],
               left_to_right_exact=in_order['retrieval_exact'])
      out.append(s)
    return out

  key, start, curve = jax.random.PRNGKey(args.seed), time.perf_counter(), []
  for i in range(args.steps + 1):
    if i % args.every == 0 or i == args.steps:
      near, far = scores(params)
      curve.append((i, near, far))
      print(f'step {i:5d}  ' + '  '.join(
          f'{name}: digits {100 * s["retrieval_digit_accuracy"]:5.1f}% '
          f'exact {100 * s["retrieval_exact"]:5.1f}% '
          f'from value {100 * s["retrieval_from_value"]:5.1f}% '
          f'(uniform {100 * s["retrieval_from_value_chance"]:4.1f}%) '
          f'left to right {100 * s["left_to_right_digits"]:5.1f}%/'
          f'{100 * s["left_to_right_exact"]:5.1f}%'
          for name, s in (('short', near), ('60-110', far))) +
          f'  {time.perf_counter() - start:6.0f} s', flush=True)
    if i < args.steps:
      batch = simple.sft_batch([sft_row(*draw(0, args.haystack), width)
                                for _ in range(args.batch)])
      key, sub = jax.random.split(key)
      params, opt_state, _ = step(params, opt_state, batch, sub)
  return curve


if __name__ == '__main__':
  main()
