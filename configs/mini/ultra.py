"""UltraLLaDA and LongLLaDA in miniature: pre-train, extrapolate, post-train, compare packings.

  python -m lladax.main --config configs/mini/ultra.py --config.workdir=/tmp/mini

A 1.9M-parameter LLaDA over bytes is pre-trained at T = 256 on Python's own prose (the reference
topics and standard-library docstrings) mixed with retrieval documents: prose with one "The
secret code of the <noun> is <digit>." at a random depth and the question, then the answer, at
the end (weight 4, about half of the tokens). An instruct stage then fine-tunes it with LLaDA's
SFT objective on retrieval records mixed with prose, first with short haystacks, then up to T,
and that is the base model from there on. Then, at 1T, 2T, 4T and 8T (256..2048 bytes), needle
retrieval over 11 depths and perplexity on held-out prose are measured for
  - the base model as is (direct extrapolation),
  - LongLLaDA's NTK base for 4T, and the diffusion-aware NTK base for 4T, without training,
  - post-trained models: 120 steps at 4T with the diffusion-aware base on packed documents, for
    each of UltraLLaDA's packings (segment ids, EOD tokens, plain concatenation) and 2 seeds.
The table, heatmaps and plots go to config.replay.report_dir (docs/mini in this recipe, so a
run reproduces the committed ones). Every stage is an ordinary lladax job (train, eval_niah,
eval_ppl) under the workdir; rerunning the command skips what is finished. Times on a 2-core
CPU are in docs/mini/README.md.

Choices the papers do not fix and we did: T, the model size, the RoPE base 10000 (d_crit is 26
of 64 rotary dimensions at T = 256, as LLaDA's 64 of 128 at 4096, so a part of the spectrum is
never seen a full period), the data mix, one-digit needle values, the instruct stage, lr 2e-3
cosine for pre-training, 1e-3 then 5e-4 cosine for the two instruct phases and 5e-4 constant for
post-training.
"""
from lladax import presets
from lladax.replay import settings


def get_config():
  c = presets.base('replay')
  c.workdir = '/tmp/lladax_mini'
  c.tokenizer = presets.byte_tokenizer()
  # 4 layers, d_model 192, 3 heads of 64 (LLaDA's head dim is 128), SwiGLU 512, bytes.
  c.model = presets.tiny_model(max_sequence_length=256, d_model=192, n_heads=3,
                               mlp_hidden_size=512, rope_theta=10000.0)
  # sft_padding is read by the instruct stage only: its loss is on the answer alone, not on EOS
  # padding that would outweigh a one-token answer fifty to one.
  c.data.update(source='pipeline', seq_len=256, batch_size=16, sft_padding='ignored')
  # Pre-training packs documents whole (first fit) with segment ids, as LLaDA's own pre-training
  # kept documents apart; positions restart per document.
  c.pipeline = presets.section(presets.pipeline_config(), seq_len=256, batch_size=16,
                               packing='segment', fit='first_fit', add_bos=True, add_eos=True,
                               log_every=0)
  c.train.update(steps=1000, log_every=50, objective='pretrain', checkpoint_every=250,
                 tensorboard=False)
  c.optim.update(learning_rate=2e-3, warmup_steps=50, schedule='cosine', decay_steps=1000,
                 weight_decay=0.01)
  # Retrieval documents are ~1/4 the length of a prose document, so weight 4 gives them about
  # half of the pre-training tokens.
  # Needle values are one digit: the network finds the needle within a few hundred fine-tuning
  # steps, but 1,000+ steps did not teach it which of several digits goes where
  # (docs/mini/README.md). The instruct stage is LLaDA's SFT on retrieval records, with pieces of
  # prose noised whole (a third of the records) so that it keeps its language model: 800 steps
  # on records of up to 160 tokens, then 400 on records up to T. Neither kind of record alone
  # made the look-up work at T (23% and 14% of the 1T prompts, teacher-forced); the two in turn
  # reached 85%. Ten needle draws per length and depth: the draw fixes the value for all 11
  # depths, so with two draws a model that answers one digit everywhere scores 0, 50 or 100%.
  c.replay = presets.section(settings.ReplayConfig, retrieval_weight=4.0, value_digits=1,
                             instruct_steps=800, instruct_longest=160, instruct_long_steps=400,
                             instruct_prose_documents=8000, niah_repeats=10,
                             report_dir='docs/mini')
  return c
