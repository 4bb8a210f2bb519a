"""The demo job: train a tiny LLaDA on key-value retrieval, then answer held-out records by sampling."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from lladax import sampler
from lladax.config import parse
from lladax.data import retrieval
from lladax.train import job as train


def evaluate(model, tok, scfg, n_pairs: int, needle: str, n: int, seed: int) -> dict:
  """Exact-match accuracy of sampled answers on `n` fresh records."""
  cfg = model.cfg
  rng = np.random.default_rng(seed)
  records = [retrieval.example(rng, n_pairs, needle) for _ in range(n)]
  bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
  tokens, mask = sampler.left_pad([bos + tok.encode(p) for p, _ in records], cfg.pad_token_id)
  out = np.asarray(sampler.generate(model, tokens, jax.random.key(seed), scfg, mask))
  eos = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)
  answers = [tok.decode(sampler.strip_generation(row[tokens.shape[1]:], eos)) for row in out]
  correct = [a.strip() == want for a, (_, want) in zip(answers, records)]
  return {'accuracy': float(np.mean(correct)), 'chance': retrieval.chance(n_pairs, needle),
          'samples': [{'prompt': p, 'answer': want, 'generated': a}
                      for (p, want), a in zip(records[:8], answers[:8])]}


def run(config) -> dict:
  recipe = parse(config)
  scfg = recipe.sample
  result = train.run(recipe)
  if result['stopped_early']:
    return result  # a checkpoint to resume from, no model to show yet
  report = evaluate(result['model'], result['tokenizer'], scfg, recipe.data.n_pairs,
                    recipe.data.needle, recipe.input('demo_eval_examples', 256), recipe.seed + 1)
  if result['history']:  # empty when the workdir's training had already finished
    first, last = result['history'][0], result['history'][-1]
    report.update(first_loss=first['loss'], last_loss=last['loss'],
                  steps=last['step'], tokens_per_second=last['tokens_per_second'])
    print(f'\nloss {first["loss"]:.3f} (step {first["step"]}) -> {last["loss"]:.3f} '
          f'(step {last["step"]})')
  for s in report['samples']:
    mark = 'ok ' if s['generated'].strip() == s['answer'] else 'no '
    print(f'  {mark} {s["prompt"]}{s["generated"]!r:8} (want {s["answer"]})')
  print(f'retrieval accuracy {report["accuracy"]:.1%} on {recipe.input("demo_eval_examples", 256)} '
        f'held-out records (copying a random value from the context: {report["chance"]:.0%})')
  if recipe.workdir:
    os.makedirs(recipe.workdir, exist_ok=True)
    with open(os.path.join(recipe.workdir, 'demo_results.json'), 'w') as f:
      json.dump(report, f, indent=2)
  return report
