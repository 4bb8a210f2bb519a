"""The recipes of the miniature's stages, derived from its one recipe: each stage runs an ordinary
lladax job (train, eval_niah, eval_ppl) on a config built here, so the replay exercises exactly the
code the 8B recipes use.

  pretrain          train from scratch at T on prose + retrieval documents (segment packing)
  instruct          SFT on retrieval prompts and answers up to instruct_longest tokens
  instruct_long     then on records up to T (both optional; the base from here on)
  post/<strategy>_seed<s>
                    train from the base model at post_multiple*T with the diffusion-aware
                    NTK base, packing documents by <strategy>
  eval/<variant>    eval_niah and eval_ppl at every length, for the base model under each
                    training-free RoPE rule and for every post-trained model (its own base)
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections

from lladax import presets
from lladax.data import config as data_config
from lladax.model_config import RopeConfig
from lladax.evals import eval_settings, niah, perplexity
from lladax.replay import corpus
from lladax.replay.settings import ReplayConfig


@dataclasses.dataclass(frozen=True)
class Variant:
  """A model evaluated on the grid: a checkpoint and the RoPE rule applied to its base."""
  name: str           # 'none', 'ntk', 'diffusion_ntk', or 'post_<strategy>_seed<s>'
  checkpoint: str
  rule: str           # the RoPE rule at evaluation ('none' for post-trained models)
  strategy: str = ''  # post-trained: its packing
  seed: int = -1


def _copy(config) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  if 'replay' in out:
    del out['replay']
  return out


def _pipeline_data(seq_len: int, batch_size: int) -> ml_collections.ConfigDict:
  """config.data of a stage that reads the Grain pipeline: only what that reads, so a setting
  for another stage (e.g. data.sft_padding for the instruct stage) does not make a finished
  pre-training or post-training folder look like another run's."""
  return presets.section(data_config.DataConfig, source='pipeline', seq_len=seq_len,
                         batch_size=batch_size)


def _sources(prose: str, retrieval: str, weight: float) -> tuple:
  return ({'kind': 'jsonl', 'path': prose, 'text_field': 'text', 'weight': 1.0},
          {'kind': 'jsonl', 'path': retrieval, 'text_field': 'text', 'weight': weight})


def pretrain(config, rcfg: ReplayConfig, files: dict, workdir: str):
  c = _copy(config)
  c.job = 'train'
  c.workdir = os.path.join(workdir, 'pretrain')
  c.checkpoint = ''
  c.model.max_sequence_length = rcfg.train_length
  c.rope = presets.section(RopeConfig)
  c.data = _pipeline_data(rcfg.train_length, config.data.batch_size)
  c.pipeline.update(seq_len=rcfg.train_length, batch_size=c.data.batch_size,
                    sources=_sources(files['prose'], files['retrieval_pre'],
                                     rcfg.retrieval_weight))
  c.train.update(init='scratch')
  return c


def instruct(config, rcfg: ReplayConfig, files: dict, workdir: str, base_model: str,
             long: bool = False):
  """Retrieval fine-tuning with LLaDA's SFT objective (the prompt is never masked): the base
  model of every later stage, as LLaDA-8B-Instruct is for the papers' instruct rows. The first
  phase reads records up to instruct_longest tokens; the `long` one, records up to T. The
  recipe's config.data.sft_padding decides whether EOS padding counts as answer."""
  name, data, length, steps, lr = (
      ('instruct_long', 'retrieval_sft_long', rcfg.train_length, rcfg.instruct_long_steps,
       rcfg.instruct_long_learning_rate) if long else
      ('instruct', 'retrieval_sft', rcfg.instruct_length, rcfg.instruct_steps,
       rcfg.instruct_learning_rate))
  c = _copy(config)
  c.job = 'train'
  c.workdir = os.path.join(workdir, name)
  c.checkpoint = base_model
  c.rope = presets.section(RopeConfig)
  c.data.update(source='sft_jsonl', path=files[data], seq_len=length)
  c.train.update(init='checkpoint', objective='sft', steps=steps,
                 log_every=max(1, min(c.train.log_every, steps)), checkpoint_every=steps)
  warmup = min(20, steps // 10)
  c.optim.update(learning_rate=lr, warmup_steps=warmup, schedule='cosine',
                 decay_steps=steps - warmup, final_lr_fraction=0.0)
  return c


def post_name(strategy: str, seed: int) -> str:
  return f'post_{strategy}_seed{seed}'


def posttrain(config, rcfg: ReplayConfig, files: dict, workdir: str, base_model: str,
              strategy: str, seed: int):
  """UltraLLaDA's recipe in miniature: the diffusion-aware NTK base for post_multiple*T, rows of
  that length, documents packed by `strategy`, a constant learning rate after a short warm-up."""
  c = _copy(config)
  c.job = 'train'
  c.seed = seed
  c.workdir = os.path.join(workdir, 'post', f'{strategy}_seed{seed}')
  c.checkpoint = base_model
  c.rope = presets.section(RopeConfig, rule='diffusion_ntk',
                           target_length=rcfg.post_length)
  c.data = _pipeline_data(rcfg.post_length, rcfg.post_batch_size)
  # UltraLLaDA's three packings differ only in how documents are kept apart: segment ids (each
  # document still ends with EOS, as in pre-training), an EOD token (EOS) between documents in
  # one attention span, or nothing at all ("plain concatenation": no EOS either, else it would
  # be the EOD strategy under another name).
  c.pipeline.update(seq_len=rcfg.post_length, batch_size=rcfg.post_batch_size, packing=strategy,
                    add_eos=strategy != 'concat', seed=seed,
                    sources=_sources(files['prose'], files['retrieval_post'],
                                     rcfg.retrieval_weight))
  c.train.update(init='checkpoint', steps=rcfg.post_steps,
                 log_every=max(1, min(c.train.log_every, rcfg.post_steps)),
                 checkpoint_every=rcfg.post_steps)
  c.optim.update(learning_rate=rcfg.post_learning_rate, warmup_steps=rcfg.post_warmup_steps,
                 schedule='constant')
  return c


def _eval_base(config, job: str, variant: Variant, rcfg: ReplayConfig, workdir: str):
  c = presets.base(job)
  c.seed = config.seed
  c.workdir = os.path.join(workdir, 'eval', variant.name)
  c.checkpoint = variant.checkpoint
  c.tokenizer = config.tokenizer
  # Evaluate as trained (float32); the shape comes from the checkpoint.
  c.model.update(dtype='float32', param_dtype='float32')
  c.rope = presets.section(RopeConfig)
  if variant.rule != 'none':
    c.rope.update(rule=variant.rule, target_length=rcfg.post_length)
  c.eval = presets.section(eval_settings.EvalConfig, batch_size=rcfg.eval_batch_size, pad_multiple=32)
  return c


def niah_grid(rcfg: ReplayConfig, files: dict) -> niah.NiahConfig:
  """The evaluation's NIAH settings: every length, depth and draw, one token per decoding step.
  The base-model probe reads its 1T prompts from the same settings."""
  # Room for the value, its period and EOS, as a completion has in training. With the value's
  # last digit in the row's last slot, a model trained on documents that end with EOS (segment
  # or EOD packing) answered EOS there whatever it had found: 105 to 110 of 110 empty answers
  # at 1T after post-training, under the packings that add EOS, and none under concatenation.
  n = rcfg.value_digits + 2
  return corpus.niah_settings(
      rcfg.lengths, rcfg.length_buffer, depths=tuple(rcfg.niah_depths),
      repeats=rcfg.niah_repeats, steps=n, gen_length=n, block_length=n,
      haystack=files['haystack'], needles=files['needles'])


def niah_eval(config, rcfg: ReplayConfig, files: dict, workdir: str, variant: Variant):
  c = _eval_base(config, 'eval_niah', variant, rcfg, workdir)
  c.sample.update(temperature=0.0)
  c.niah = presets.section(niah.NiahConfig, **dataclasses.asdict(niah_grid(rcfg, files)))
  return c


def ppl_eval(config, rcfg: ReplayConfig, files: dict, workdir: str, variant: Variant):
  c = _eval_base(config, 'eval_ppl', variant, rcfg, workdir)
  c.eval.batch_size = rcfg.ppl_mc_samples
  c.ppl = presets.section(perplexity.PplConfig, text=files['ppl'], lengths=rcfg.lengths,
                          estimators=('longllada',), chunk=rcfg.ppl_chunk,
                          mc_samples=rcfg.ppl_mc_samples, mc_batch=rcfg.ppl_mc_samples,
                          chunk_stride=rcfg.ppl_chunk_stride)
  return c


def variants(rcfg: ReplayConfig, base: str, posttrained: dict) -> list[Variant]:
  """The training-free rules on the base model (the last instruct phase's, else the pre-trained
  one), then every post-trained model; `posttrained` maps (strategy, seed) to a model directory."""
  out = [Variant(rule, base, rule) for rule in rcfg.training_free]
  for (strategy, seed), path in posttrained.items():
    out.append(Variant(post_name(strategy, seed), path, 'none', strategy, seed))
  return out
