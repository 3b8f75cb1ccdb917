r"""Stage-2 timing on this machine: train step, beam search, greedy text,
with the training step against PyTorch in the same run.

Builds stage 2 exactly as ``launch/train.py`` would for --config (real LLM,
prompt mixture, length buckets; a random CF table and Q-Former, since only
time is measured) and times, per length bucket,

* one training step (compile, then the median of --steps more), ours and
  the PyTorch reference's, interleaved step by step on the same batches;
* one constrained beam search over ``stage2.eval.batch_size`` sequential
  prompts (compile, then steady),
* one greedy decode of as many item-description prompts,
* one re-ranking scoring call (``stage2.rerank.batch_size`` prompts; its
  comparison with the naive transformers way is --rerank, below),

then projects the wall time of the config's stage 2: its training steps
(spread over buckets as its examples are) and its evaluation (users and
the evaluations ``stage2.evaluations`` declares).

The reference (``launch/torch_reference.py``) is the same training step as
a PyTorch user would write it: transformers' ``LlamaForCausalLM`` holding
our LLM's very weights, frozen (``requires_grad`` False, so no weight
gradients); transformers' BLIP-2 ``Blip2QFormerModel`` (post-LN BERT layers,
cross-attention to the CF tokens every ``cross_attention_freq``-th layer,
the queries' own feed-forward block) of our Q-Former's layer count, width,
heads and queries, with our CF projection, type embedding and norm; the
linear adapter; soft tokens (and list-token means, shared soft prompt)
spliced into the prompt's word embeddings; logits only at the answer and
candidate positions; the same answer cross-entropy plus re-ranking softmax;
``clip_grad_norm_`` and ``torch.optim.AdamW`` on the encoder only, with our
decay groups and learning-rate schedule. It starts from our initial encoder
weights, so before timing, the loss of each bucket's first step must equal
ours (asserted; both sides restart from those weights per bucket). What
differs: the libraries' kernels (transformers' SDPA attention; a 4D mask
for rows that pack re-ranking candidates, which transformers needs to keep
them apart), PyTorch's clipping divides by norm + 1e-6, and the reference
runs on the CPU whatever JAX runs on. Batches are made once, outside both
timings. Equal shapes make equal FLOPs.

Threads: JAX runs on XLA's CPU pool, one thread per core this process may
use (printed); PyTorch with ``torch.set_num_threads(n)`` for each n of
--torch_threads (default: the same count), compared at its fastest.

FLOPs and MFU (``ilm_jax.mfu``): per bucket, the step's model FLOPs (the
frozen LLM's forward and input gradients, 2x its weight matmuls and 3x its
attention matmuls; the Q-Former and adapter 3x their forward) over its
time, over the matmul peak measured in this run in the LLM's dtype.

The last lines compare the two per bucket and over the config's mixture of
buckets: the ratio is PyTorch's step time / ours (> 1: ours is faster).
Writes ``bench_stage2.json`` to --workdir.

With --rerank, the re-ranking scorer is compared instead (nothing else
runs): one batch of ``stage2.rerank.batch_size`` prompts with
``stage2.rerank.num_candidates`` candidates each (the config's first
re-ranking task, candidates from the CF table), scored by ours
(``candidate_scores``: every candidate's answer packed after the prompt,
one forward) and the naive transformers way
(``torch_reference.naive_candidate_scores``: per candidate, one forward of
prompt + answer but its last token, the answer tokens' log-probabilities
summed). transformers has no soft tokens, so the reference is given our
spliced prompt embeddings, computed once outside its timing; both thus
score the same prompts and must agree (asserted). Ours includes its
Q-Former. Medians of --steps calls after a warm-up; the last line is the
ratio transformers' time / ours; writes ``bench_rerank.json``. With
single-token labels (letters, the CPU recipes) each naive forward is the
prompt alone, N times over; identifiers give every candidate its own
tokens.

With --generate, the constrained beam search of item evaluation is compared
instead (nothing else runs): ``stage2.eval.batch_size`` users' sequential
test prompts, ``stage2.eval.num_beams`` beams that may only spell the
catalogue's identifiers (the trie of ``stage2.build_trie``). Ours: the
evaluation's ``generative.rank_items`` whole: prompts collated, their
embeddings (Q-Former included), cut to the longest prompt (rounded up to
``generative.TRIM_MULTIPLE``), ``beam_search`` (each prompt prefilled once
with the identifiers' common start, e.g. ``item_``, its cache shared by its
beams) and the ranked items.
Theirs: transformers' ``generate(num_beams=W, num_return_sequences=W,
prefix_allowed_tokens_fn=<the same trie>, do_sample=False,
length_penalty=0.0, early_stopping=False)`` on the same LLM weights, given
our spliced prompt embeddings (computed once, outside its timing) as
left-padded ``inputs_embeds`` with their attention mask, and the same
ranked items read from its beams. Length penalty 0 scores beams by summed
log-probability, as ours; early_stopping=False stops only when no running
beam can still beat a finished one, which is exact at that penalty. Both
must return the same top item per prompt (asserted; an exact tie of scores
may pick either), then each is timed (medians of --steps calls after a
warm-up). Beam tokens/s counts B x W x N (N = the longest identifier) over
a call's time; the last line is the ratio transformers' time / ours;
writes ``bench_generate.json``.

  python launch/bench_stage2.py --config=configs/default.py \
      --workdir=workdir/bench_stage2
  python launch/bench_stage2.py --config=configs/default.py --rerank \
      --workdir=workdir/bench_stage2
  python launch/bench_stage2.py --config=configs/default.py --generate \
      --workdir=workdir/bench_stage2
  python launch/bench_stage2.py --config=configs/default.py:small \
      --config.stage2.llm=tiny --steps=1 --workdir=workdir/bench_stage2_smoke
"""

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time

import jax
import ml_collections
import numpy as np
import torch
import torch_reference as R
import transformers
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from ilm_jax import console, files, mfu, step_profile
from ilm_jax.convert.frozen_llm import load_stage2_llm
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import ItemIndex, make_index
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.encoding import PromptEncoder, encode_fitting
from ilm_jax.data.stage2.records import write_stage2_records
from ilm_jax.data.stage2.sampling import (
  evaluation_prompts,
  text_evaluation_prompts,
)
from ilm_jax.decode.item_trie import ItemTrie, ranked_items
from ilm_jax.eval import evaluations as E
from ilm_jax.eval import generative
from ilm_jax.eval.full_ranking import dot_product_scorer
from ilm_jax.eval.generative import prompt_batches
from ilm_jax.models.ilm import ItemLanguageModel
from ilm_jax.models.llm import LlmConfig
from ilm_jax.pipeline import stage2
from ilm_jax.pipeline.cf import als_config
from ilm_jax.rerank import candidates
from ilm_jax.rerank import stage as rerank
from ilm_jax.rerank.evaluate import score_prompts
from ilm_jax.rerank.prompts import rerank_prompts, shown_order
from ilm_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/default.py", "Experiment config (as for train.py)."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/bench_stage2", "Output directory."
)
_STEPS = flags.DEFINE_integer(
  "steps",
  3,
  "Timed steps per bucket, or re-ranking calls with --rerank (medians).",
)
_TORCH_THREADS = flags.DEFINE_list(
  "torch_threads",
  [str(len(os.sched_getaffinity(0)))],
  "PyTorch intra-op thread counts to time (default: XLA's CPU threads).",
)
_REFERENCE = flags.DEFINE_bool(
  "reference",
  True,
  "Time the PyTorch reference of the training step beside ours.",
)
_RERANK = flags.DEFINE_bool(
  "rerank",
  False,
  "Instead of training and generation, time our packed re-ranking scorer "
  "against transformers' one forward per candidate (bench_rerank.json).",
)

_GENERATE = flags.DEFINE_bool(
  "generate",
  False,
  "Instead of training and generation, time our constrained beam search "
  "against transformers' generate with the same trie (bench_generate.json).",
)

_PROFILE = flags.DEFINE_bool(
  "profile",
  False,
  "Instead of everything else, trace --steps training steps per bucket and "
  "split their wall time into matmuls, other ops and idle, by scope "
  "(forward / backward; frozen LLM, encoder, rest): where the step's time "
  "goes beside its MFU (bench_stage2_profile.json).",
)
_HOST_MEMORY = console.define_host_memory()

# Steps run before tracing: the first compiles, the next ones still grow
# the retained host memory (``--host_memory``), which steady steps reuse.
_PROFILE_WARMUP = 4

# Op scopes of the stage-2 step (``step_profile.scope``): the frozen LLM's
# ops (and copies of its weights), the trainable encoder's, the rest (loss
# head, splice, optimiser).
_PARTS = (
  ("frozen LLM", "Decoder"),
  ("encoder", "SoftTokenEncoder"),
  ("frozen LLM", "llm"),  # XLA's copies of frozen['llm'] weights
)

# Parity at the same weights, float32 (reductions differ): the first
# step's loss, relative; re-ranking scores (log-likelihood sums), absolute;
# beam scores likewise.
_LOSS_RTOL = 1e-4
_SCORE_ATOL = 1e-3


def _timed(fn):
  return _timed_value(fn)[0]


def _timed_value(fn):
  """(seconds, value) of ``fn()``, waiting for JAX's asynchronous result."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def _group_name(length: int, rerank: bool) -> str:
  return f"{length}{' rerank' if rerank else ''}"


def _group_batches(data, count):
  """``count`` + 1 training batches of each (bucket length, kind) group."""
  names = [_group_name(data.buckets[b], r) for b, r in data.groups]
  want = {name: [] for name in names}
  for _ in range(100 * count * len(names)):
    if all(len(v) >= count + 1 for v in want.values()):
      break
    batch = next(data)
    name = _group_name(
      batch["tokens"].shape[1], batch["cand_logits_at"].shape[1] > 1
    )
    if len(want[name]) < count + 1:
      want[name].append(batch)
  return want


def _check_reference(c) -> None:
  """The PyTorch reference implements the "ilm" variant's plain step."""
  problems = []
  if c.variant != "ilm":
    problems.append(f"config.stage2.variant={c.variant!r} (needs 'ilm')")
  if float(c.retrieval_weight) > 0:
    problems.append(
      f"config.stage2.retrieval_weight={c.retrieval_weight} (no head)"
    )
  if str(c.train.freeze_regex):
    problems.append(
      f"config.stage2.train.freeze_regex={c.train.freeze_regex!r} (the "
      "reference trains the whole encoder)"
    )
  if problems:
    raise ValueError(
      "the PyTorch reference does not implement "
      f"{'; '.join(problems)}: change them or pass --noreference"
    )


def _step_flops(llm_config, qcfg, batch) -> float:
  """Model FLOPs of one training step on ``batch`` (``ilm_jax.mfu``)."""
  b, length = batch["tokens"].shape
  _, n, m = batch["cand_logits_at"].shape
  return mfu.stage2_step_flops(
    llm_config,
    qcfg,
    batch=b,
    length=length,
    entities=batch["entities"].shape[0],
    logit_positions=batch["target_positions"].shape[1] + n * m,
  )


def _time_training(trainer, frozen, host_params, groups, reference, threads):
  """Times training steps, ours and the reference's, interleaved.

  Per group (bucket length, kind), both restart from our initial encoder
  params ``host_params``; their first steps' losses (at those weights)
  must agree. The first step of each (ours compiles) is reported apart.

  Args:
    trainer: our ``loop.Trainer``.
    frozen: placed {"llm", "cf"}.
    host_params: initial encoder params (numpy).
    groups: group name -> collated batches (``_group_batches``).
    reference: ``torch_reference.Stage2Step`` or None.
    threads: PyTorch thread counts to time.

  Returns:
    {"ours": {group: {"first", "step"} seconds}, "torch": {n: the same},
    "parity": {group: {"ours", "torch"} first-step losses}, "params": our
    encoder params after the last group}.
  """
  count = max(len(b) for b in groups.values())
  # Ours steps from 0 in each group: the reference follows the schedule.
  rates = np.asarray(jax.vmap(trainer.schedule)(np.arange(count))).tolist()
  ours, theirs = {}, {n: {} for n in threads}
  parity = {}
  for name, batches in groups.items():
    state = trainer.init_state(host_params)
    if reference is not None:
      reference.reset(host_params)
    times = {"ours": [], **{n: [] for n in threads}}
    for i, batch in enumerate(batches):
      placed = trainer.place_batch(batch)

      def step(placed=placed):
        nonlocal state
        state, metrics = trainer.step(state, frozen, placed)
        return state, metrics["loss"]

      seconds, (_, loss) = _timed_value(step)
      times["ours"].append(seconds)
      torch_batch = R.to_torch(batch) if threads else None
      for n in threads:
        torch.set_num_threads(n)
        seconds, torch_loss = _timed_value(
          lambda b=torch_batch, lr=rates[i]: reference.step(b, lr)
        )
        times[n].append(seconds)
        if name not in parity:
          parity[name] = {"ours": float(loss), "torch": torch_loss}
          print(f"train {name}: first-step loss {parity[name]}")
          assert math.isclose(float(loss), torch_loss, rel_tol=_LOSS_RTOL), (
            parity[name]
          )

    def figures(t):
      return {"first": t[0], "step": statistics.median(t[1:])}

    ours[name] = figures(times["ours"])
    for n in threads:
      theirs[n][name] = figures(times[n])
    print(
      f"train {name}: ours {ours[name]}"
      + "".join(f", PyTorch n={n} {theirs[n][name]}" for n in threads)
    )
  return {
    "ours": ours,
    "torch": theirs,
    "parity": parity,
    "params": jax.device_get(state.params),
  }


def _compare(ours, theirs, flops, share, padding, peak) -> dict:
  """Steady step seconds, GFLOP/s, MFU and ratios, per group and over the
  config's mixture of groups (weighted by ``share``).

  Returns:
    {"buckets": {group or "mixture": {"share", "padding", "flops", "ours":
    {"step", "gflops", "mfu"}, "torch": {n: the same plus "ratio" (its
    time / ours)}}}, "torch_threads": the fastest n on the mixture (None
    without a reference), "ratio": its mixture ratio (None likewise)}.
  """

  def side(seconds, count):
    return {"step": seconds, **mfu.utilisation(count, seconds, peak)}

  def mixed(values):
    return sum(share[g] * values[g] for g in ours)

  def row(label_share, pad, count, seconds, torch_seconds):
    return {
      "share": label_share,
      "padding": pad,
      "flops": count,
      "ours": side(seconds, count),
      "torch": {n: side(t, count) for n, t in torch_seconds.items()},
    }

  rows = {
    g: row(
      share[g],
      padding[g],
      flops[g],
      ours[g]["step"],
      {n: theirs[n][g]["step"] for n in theirs},
    )
    for g in ours
  }
  rows["mixture"] = row(
    1.0,
    mixed(padding),
    mixed(flops),
    mixed({g: ours[g]["step"] for g in ours}),
    {n: mixed({g: theirs[n][g]["step"] for g in ours}) for n in theirs},
  )
  for r in rows.values():
    for figures in r["torch"].values():
      figures["ratio"] = figures["step"] / r["ours"]["step"]
  mixture = rows["mixture"]["torch"]
  best = min(mixture, key=lambda n: mixture[n]["step"]) if mixture else None
  return {
    "buckets": rows,
    "torch_threads": best,
    "ratio": None if best is None else mixture[best]["ratio"],
  }


def _write(name: str, result: dict) -> None:
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, name)
  files.write_json(path, result, default=str)
  print(f"wrote {path}")


def _threads(threads) -> dict:
  # XLA's CPU client runs one intra-op thread per core it may use.
  return {"xla_cpu": len(os.sched_getaffinity(0)), "torch": threads}


def _versions() -> dict:
  return {
    "jax": jax.__version__,
    "torch": torch.__version__,
    "transformers": transformers.__version__,
  }


def _print_setting(peak, threads) -> None:
  """Threads and matmul peak: what the closing tables are measured with."""
  print(
    f"threads: ours = XLA CPU, {_threads(threads)['xla_cpu']} intra-op "
    f"threads (one per core this process may use; {jax.devices()[0]}); "
    f"PyTorch = torch.set_num_threads(n), n in {threads}"
  )
  print(
    f"matmul peak {peak.gflops:.1f} GFLOP/s ({peak.dtype} {peak.size}^3, "
    "measured in this run); MFU = model GFLOP/s / peak"
  )


def _print_comparison(comparison, peak, threads) -> None:
  """The closing table; the ratio over the mixture is the last line."""
  _print_setting(peak, threads)
  header = f"{'train step':14s} {'share':>6s} {'pad':>6s} {'GFLOP':>8s}"
  header += f" {'ours s':>8s} {'MFU':>6s}"
  for n in threads:
    header += f" {f'torch{n} s':>9s} {'MFU':>6s} {'ratio':>6s}"
  print(header)
  for name, row in comparison["buckets"].items():
    line = (
      f"{name:14s} {row['share']:6.1%} {row['padding']:6.1%} "
      f"{row['flops'] / 1e9:8.1f} {row['ours']['step']:8.3f} "
      f"{row['ours']['mfu']:6.1%}"
    )
    for n in threads:
      t = row["torch"][n]
      line += f" {t['step']:9.3f} {t['mfu']:6.1%} {t['ratio']:5.2f}x"
    print(line)
  best = comparison["torch_threads"]
  if best is None:
    return
  per_bucket = ", ".join(
    f"{name} {row['torch'][best]['ratio']:.2f}x"
    for name, row in comparison["buckets"].items()
    if name != "mixture"
  )
  print(
    "ratio PyTorch/ours (training step time, > 1: ours faster): "
    f"{comparison['ratio']:.2f}x over the config's bucket mixture (PyTorch "
    f"n={best}); per bucket {per_bucket}"
  )


@dataclasses.dataclass(frozen=True)
class _Built:
  """Stage 2 as ``launch/train.py`` builds it, with a random CF table
  (float32[U + I, d]) and encoder (``boxed``)."""

  config: ml_collections.ConfigDict
  split: LeaveOneOutSplit
  index: ItemIndex
  llm_config: LlmConfig
  llm_params: dict
  cf: np.ndarray
  model: ItemLanguageModel
  boxed: dict
  encoder: PromptEncoder


def _build(config) -> _Built:
  c = config.stage2
  split = load_split(config.dataset)
  rows = split.num_users + split.num_items
  cf = np.random.default_rng(0).normal(size=(rows, config.cf.dim))
  # Collaborative identifiers cluster the random table's item rows: codes of
  # the recipe's length and branching, which is all a speed benchmark needs.
  index = make_index(
    split,
    config.dataset.indexing,
    config.seed,
    cf[split.num_users :],
    config.dataset.get("balanced_tree", False),
  )
  llm_config, llm_params, tokenizer = load_stage2_llm(c.llm, config.seed)
  model, boxed, _ = stage2.build_model(
    config, "/nonexistent", split.num_users, config.cf.dim, llm_config
  )
  encoder = PromptEncoder(
    tokenizer,
    index,
    split.num_users,
    stage2.coding_of(c, model.encoder),
    c.max_answer_tokens,
  )
  return _Built(
    config,
    split,
    index,
    llm_config,
    llm_params,
    cf.astype(np.float32),
    model,
    boxed,
    encoder,
  )


def _rerank_prompts(built: _Built, task: str):
  """Re-ranking prompts (held-out templates) of the first
  ``stage2.rerank.batch_size`` users' test items, their candidates the
  CF table's top N."""
  config, split, cf = built.config, built.split, built.cf
  c = config.stage2
  lists = candidates.evaluation_lists(
    split,
    "test",
    np.arange(c.rerank.batch_size),
    dot_product_scorer(cf[: split.num_users], cf[split.num_users :]),
    rerank.list_length(c, tuple(config.eval.ks)),
  )
  shown = shown_order(lists, c.rerank.num_candidates, c.rerank.order, 0)
  return rerank_prompts(
    lists, shown, task, False, split.catalog, c.max_history, 0, True
  )


def _rerank_flops(model, llm_config, batch, width: int, longest: int):
  """Model FLOPs of one re-ranking batch, {"ours", "torch"}.

  Ours: the encoder over the batch's E entities, the LLM over B x L
  packed tokens, the head at every candidate's N x M answer positions.
  The naive way: N forwards of B x ``width`` tokens, the head at
  ``longest`` positions each (its prompt embeddings are given).
  """
  b, length = batch["tokens"].shape
  _, num, m = batch["cand_tokens"].shape
  qcfg = model.encoder.qformer_config
  encoder = 0.0
  if qcfg is not None:
    entities = batch["entities"].shape[0]
    encoder = mfu.qformer_forward(qcfg, entities, llm_config.embed_dim).total
  ours = mfu.decoder_forward(llm_config, b, length).total + encoder
  naive = mfu.decoder_forward(llm_config, b, width).total
  return {
    "ours": ours + mfu.head_flops(llm_config, b * num * m),
    "torch": num * (naive + mfu.head_flops(llm_config, b * longest)),
  }


def _rerank_comparison(built: _Built, peak, threads) -> None:
  """Times one re-ranking batch both ways; writes ``bench_rerank.json``.

  Ours: ``candidate_scores``, one forward of each prompt with every
  candidate's answer packed after it. Theirs: transformers' Llama, one
  forward of prompt + answer per candidate
  (``torch_reference.naive_candidate_scores``), given our spliced prompt
  embeddings (computed once, outside its timing), so both read the same
  soft tokens and must give the same scores (asserted first).
  """
  config, model, cf = built.config, built.model, built.cf
  llm_config, llm_params = built.llm_config, built.llm_params
  c = config.stage2
  reranks = E.of_kind(E.parse(c.evaluations), E.RERANK)
  task = reranks[0].task if reranks else P.RERANK
  prompts = _rerank_prompts(built, task)
  b, buckets = int(c.rerank.batch_size), tuple(c.length_buckets)
  chunk, batch = next(prompt_batches(built.encoder, prompts, b, buckets))
  # The rows ours scores: the chunk, padded by repeating its last prompt.
  rows = list(chunk) + [chunk[-1]] * (b - len(chunk))
  encoded = [
    encode_fitting(built.encoder, prompts[i], buckets[-1], False) for i in rows
  ]
  params = nn.unbox(built.boxed)
  batch = jax.device_put(batch)
  x = jax.jit(model.prompt_embeddings)(params, llm_params, cf, batch)
  x = np.asarray(x)
  embedded = [
    torch.tensor(x[r, : e.answer_start]) for r, e in enumerate(encoded)
  ]
  answers = [e.cand_tokens for e in encoded]
  llm = R.llama_from_params(llm_config, llm_params)
  score = jax.jit(model.candidate_scores)

  def ours():
    return score(params, llm_params, cf, batch)

  def theirs():
    with torch.inference_mode():
      return R.naive_candidate_scores(llm, embedded, answers).numpy()

  first, ours_scores = _timed_value(ours)
  diff = {}
  for n in threads:  # also PyTorch's warm-up at each thread count
    torch.set_num_threads(n)
    diff[n] = float(np.abs(np.asarray(ours_scores) - theirs()).max())
  print(f"re-ranking scores, max |ours - transformers'|: {diff}")
  assert max(diff.values()) < _SCORE_ATOL, diff
  times = {"ours": [], **{n: [] for n in threads}}
  for _ in range(_STEPS.value):
    times["ours"].append(_timed(ours))
    for n in threads:
      torch.set_num_threads(n)
      times[n].append(_timed(theirs))
  num, m = batch["cand_tokens"].shape[1:]
  length = batch["tokens"].shape[1]
  width, longest = R.naive_shape(embedded, answers)
  flops = _rerank_flops(model, llm_config, batch, width, longest)
  seconds = {k: statistics.median(v) for k, v in times.items()}
  figures = {
    k: {
      "batch": t,
      "flops": flops["ours" if k == "ours" else "torch"],
      **mfu.utilisation(flops["ours" if k == "ours" else "torch"], t, peak),
    }
    for k, t in seconds.items()
  }
  best = min(threads, key=seconds.get)
  ratio = seconds[best] / seconds["ours"]
  result = {
    "config": {
      "llm": c.llm,
      "task": task,
      "labels": c.rerank.labels,
      "batch_size": b,
      "num_candidates": num,
      "answer_tokens": m,
      "packed_length": length,
      "naive_length": width,
      "prompt_lengths": [len(p) for p in embedded],
    },
    "ours": {"first": first, **figures["ours"]},
    "torch": {n: figures[n] for n in threads},
    "max_score_diff": diff,
    "matmul_peak": dataclasses.asdict(peak),
    "threads": _threads(threads),
    "versions": _versions(),
    "seconds": times,
    "ratio": ratio,
    "ratio_torch_threads": best,
  }
  _write("bench_rerank.json", result)
  print(
    f"re-ranking {b} prompts x {num} candidates ({task}, {c.rerank.labels}, "
    f"answers of up to {m} tokens), {llm_config.name}: ours one packed "
    f"forward of {b} x {length} tokens, transformers {num} forwards of "
    f"{b} x {width}"
  )
  _print_setting(peak, threads)
  print(f"{'':14s} {'s/batch':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'MFU':>6s}")
  for k, f in figures.items():
    label = "ours (JAX)" if k == "ours" else f"PyTorch n={k}"
    print(
      f"{label:14s} {f['batch']:8.3f} {f['flops'] / 1e9:8.1f} "
      f"{f['gflops']:8.1f} {f['mfu']:6.1%}"
    )
  print(
    "ratio transformers/ours (re-ranking batch time, > 1: ours faster): "
    f"{ratio:.2f}x (PyTorch n={best})"
  )


def trie_prefix_fn(trie: ItemTrie):
  """transformers' ``prefix_allowed_tokens_fn`` walking our trie.

  ``fn(batch_id, generated)`` gets a beam's tokens so far (only generated
  ones: the prompt is ``inputs_embeds``) and returns the tokens that keep
  it on an identifier, as ``allowed_by_trie`` allows ours.
  """
  alphabet = np.flatnonzero(
    trie.column_of_token < trie.transitions.shape[1] - 1
  )
  alphabet = alphabet[np.argsort(trie.column_of_token[alphabet])]
  # Per node, its allowed token ids: the walk is then one table look-up per
  # generated token.
  allowed = [
    alphabet[row[: len(alphabet)] >= 0].tolist() for row in trie.transitions
  ]
  columns = trie.column_of_token

  def fn(batch_id, generated):
    del batch_id
    node = 0
    for token in generated.tolist():
      node = int(trie.transitions[node, columns[token]])
      if node < 0:
        return []
    return allowed[node]

  return fn


def left_padded(x: np.ndarray, mask: np.ndarray):
  """Right-padded float[B, L, D] prompts as transformers' batched generate
  wants them: (float32[B, L', D] left-padded, int64[B, L'] attention mask),
  L' the longest prompt."""
  lengths = mask.sum(axis=1)
  width = int(lengths.max())
  out = torch.zeros(x.shape[0], width, x.shape[2])
  attention = torch.zeros(x.shape[0], width, dtype=torch.long)
  for r, n in enumerate(lengths):
    out[r, width - n :] = torch.from_numpy(np.asarray(x[r][mask[r]]))
    attention[r, width - n :] = 1
  return out, attention


def _top_items_agree(ours, theirs) -> list[bool]:
  """Per prompt, whether both searches put the same item first, or items
  whose scores (ours) tie within ``_SCORE_ATOL``.

  Args:
    ours, theirs: (int[B, W] ranked items, float[B, W] beam scores).
  """
  out = []
  for (oi, os_), (ti, ts) in zip(zip(*ours), zip(*theirs)):
    same = oi[0] == ti[0]
    tied = abs(float(os_[0]) - float(ts[0])) < _SCORE_ATOL and (
      ti[0] in oi.tolist()
      and abs(float(os_[0]) - float(os_[oi.tolist().index(ti[0])]))
      < _SCORE_ATOL
    )
    out.append(bool(same or tied))
  return out


def _generate_comparison(built: _Built, threads) -> None:
  """Times one batch of constrained beam search both ways; writes
  ``bench_generate.json`` (module docstring, --generate)."""
  config, split, model, cf = built.config, built.split, built.model, built.cf
  llm_config, llm_params = built.llm_config, built.llm_params
  c = config.stage2
  b, width = int(c.eval.batch_size), int(c.eval.num_beams)
  buckets = tuple(c.length_buckets)
  users = np.arange(b)
  prompts = evaluation_prompts(
    split, "test", False, users, P.SEQUENTIAL, c.max_history
  )
  trie = stage2.build_trie(built.encoder, llm_config.vocab_size)
  steps = trie.max_length
  chunk, batch = next(prompt_batches(built.encoder, prompts, b, buckets))
  # Those of the first batch (one length bucket): ours then searches the
  # very rows (padding repeats included) transformers is given.
  prompts = [prompts[i] for i in chunk]
  params = nn.unbox(built.boxed)
  # The weights stay placed, as transformers' stay in its model.
  llm_params = jax.device_put(llm_params)
  mask = np.asarray(batch["input_mask"])
  x = jax.jit(model.prompt_embeddings)(params, llm_params, cf, batch)
  x, attention = left_padded(np.asarray(x), mask)
  llm = R.llama_from_params(llm_config, llm_params)
  allowed = trie_prefix_fn(trie)
  eos = [int(i) for i in llm_config.eos_ids]
  inputs = (model, params, llm_params, cf, built.encoder, prompts, trie)
  common = dict(batch_size=b, buckets=buckets, num_beams=width)

  def ours():
    return generative.rank_items(*inputs, **common)

  def generate(scores=False):
    with torch.inference_mode():
      return llm.generate(
        inputs_embeds=x,
        attention_mask=attention,
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=steps,
        prefix_allowed_tokens_fn=allowed,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=False,
        eos_token_id=eos,
        pad_token_id=llm_config.pad_id,
        return_dict_in_generate=scores,
        output_scores=scores,
      )

  def theirs():
    tokens = generate().numpy().reshape(b, width, -1)
    return ranked_items(trie, tokens)

  first, _ = _timed_value(ours)
  # The first batch's beams: every prompt here, padded rows included, as
  # the rows given to transformers.
  _, beams = next(generative.item_beams(*inputs, **common))
  tokens, scores = np.asarray(beams.tokens), np.asarray(beams.scores)
  ours_out = (ranked_items(trie, tokens), scores)
  parity = {}
  for n in threads:  # also transformers' warm-up at each thread count
    torch.set_num_threads(n)
    out = generate(scores=True)
    their_tokens = out.sequences.numpy().reshape(b, width, -1)
    their_scores = out.sequences_scores.numpy().reshape(b, width)
    agree = _top_items_agree(
      ours_out, (ranked_items(trie, their_tokens), their_scores)
    )
    overlap = [
      len(set(o[o >= 0]) & set(t[t >= 0])) / width
      for o, t in zip(ours_out[0], ranked_items(trie, their_tokens))
    ]
    parity[n] = {
      "top_item_agrees": agree,
      "max_top_score_diff": float(
        np.abs(ours_out[1][:, 0] - their_scores[:, 0]).max()
      ),
      "list_overlap": float(np.mean(overlap)),
    }
  print(f"beam search parity (top item per prompt, scores): {parity}")
  for n, p in parity.items():
    assert all(p["top_item_agrees"]), (n, p)
  times = {"ours": [], **{n: [] for n in threads}}
  for _ in range(_STEPS.value):
    times["ours"].append(_timed(ours))
    for n in threads:
      torch.set_num_threads(n)
      times[n].append(_timed(theirs))
  seconds = {k: statistics.median(v) for k, v in times.items()}
  beam_tokens = b * width * steps
  best = min(threads, key=seconds.get)
  ratio = seconds[best] / seconds["ours"]
  result = {
    "config": {
      "llm": c.llm,
      "batch_size": b,
      "num_beams": width,
      "identifiers": int((trie.item_at_node >= 0).sum()),
      "max_new_tokens": steps,
      "prompt_bucket": int(mask.shape[1]),
      "prompt_cut": generative.trimmed_length(mask, len(trie.forced_prefix)),
      "forced_tokens": len(trie.forced_prefix),
      "prompt_lengths": mask.sum(axis=1).tolist(),
      "beam_tokens": beam_tokens,
    },
    "ours": {
      "first": first,
      "batch": seconds["ours"],
      "beam_tokens_per_s": beam_tokens / seconds["ours"],
    },
    "torch": {
      n: {"batch": seconds[n], "beam_tokens_per_s": beam_tokens / seconds[n]}
      for n in threads
    },
    "parity": parity,
    "threads": {**_threads(threads), "xla_flags": os.environ.get("XLA_FLAGS")},
    "versions": _versions(),
    "seconds": times,
    "ratio": ratio,
    "ratio_torch_threads": best,
  }
  _write("bench_generate.json", result)
  print(
    f"constrained beam search, {b} prompts (bucket {mask.shape[1]}) x "
    f"{width} beams over {result['config']['identifiers']} identifiers "
    f"(up to {steps} tokens), {llm_config.name}"
  )
  print(
    f"threads: ours = XLA CPU, {_threads(threads)['xla_cpu']} intra-op "
    f"threads (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}); PyTorch = "
    f"torch.set_num_threads(n), n in {threads}"
  )
  print(f"{'':22s} {'s/batch':>8s} {'beam tok/s':>10s}")
  print(
    f"{'ours (JAX)':22s} {seconds['ours']:8.3f} "
    f"{beam_tokens / seconds['ours']:10.1f}"
  )
  for n in threads:
    print(
      f"{f'transformers n={n}':22s} {seconds[n]:8.3f} "
      f"{beam_tokens / seconds[n]:10.1f}"
    )
  print(
    "ratio transformers/ours (beam search batch time, > 1: ours faster): "
    f"{ratio:.2f}x (PyTorch n={best})"
  )


@dataclasses.dataclass(frozen=True)
class _Training:
  """The config's stage-2 training as ``launch/train.py`` sets it up."""

  trainer: loop.Trainer
  frozen: dict
  host_params: dict
  groups: dict
  share: dict


def _training(built: _Built) -> _Training:
  """Trainer, placed frozen tree, initial encoder params and ``--steps`` + 1
  batches of each (bucket, kind) group with its share of the examples."""
  config, split, index = built.config, built.split, built.index
  model, boxed, encoder = built.model, built.boxed, built.encoder
  c = config.stage2
  ks = tuple(config.eval.ks)
  rerank_train, _ = rerank.training_prompts(
    c, split, als_config(config), ks, config.seed
  )
  examples, _ = stage2.training_examples(
    c, split, index, encoder, config.seed, rerank_train
  )
  records = os.path.join(tempfile.mkdtemp(prefix="bench_stage2"), "train")
  write_stage2_records(records, examples)
  data = BucketBatches(
    records,
    c.batch_size,
    tuple(c.length_buckets),
    c.max_answer_tokens,
    encoder.pad_id,
    num_users=split.num_users if c.retrieval_weight > 0 else None,
  )
  share = {
    _group_name(data.buckets[b], r): len(m) / len(examples)
    for (b, r), m in zip(data.groups, data.members)
  }
  trainer = loop.Trainer(
    model.loss, c.train, nn.unbox(boxed), nn.get_partition_spec(boxed)
  )
  return _Training(
    trainer,
    trainer.place_frozen({"llm": built.llm_params, "cf": built.cf}),
    jax.tree.map(np.asarray, nn.unbox(boxed)),
    _group_batches(data, _STEPS.value),
    share,
  )


def _profile_training(built: _Built, peak) -> None:
  """Where each bucket's training step spends its wall time
  (``ilm_jax.step_profile``); writes ``bench_stage2_profile.json``."""
  setup = _training(built)
  trainer, qcfg = setup.trainer, built.model.encoder.qformer_config
  _print_setting(peak, [])
  out = {}
  for name, batches in setup.groups.items():
    state = trainer.init_state(setup.host_params)
    placed = trainer.place_batch(batches[0])

    def step(placed=placed):
      nonlocal state
      state, metrics = trainer.step(state, setup.frozen, placed)
      return metrics["loss"]

    # Untraced: the compile, and the first steps' growth of host memory.
    for _ in range(_PROFILE_WARMUP):
      jax.block_until_ready(step())
    text = trainer.compiled_text(state, setup.frozen, placed)
    b = step_profile.profile_calls(step, text, _STEPS.value, _PARTS)
    flops = _step_flops(built.llm_config, qcfg, batches[0])
    matmul = b.of_kind(step_profile.MATMUL)
    out[name] = {
      "wall": b.wall,
      "flops": flops,
      "mfu": mfu.utilisation(flops, b.wall, peak)["mfu"],
      "matmul_seconds": matmul,
      # The rate while some matmul runs: model FLOPs are matmul FLOPs.
      "matmul_time_mfu": mfu.utilisation(flops, matmul, peak)["mfu"],
      "rows": b.rows(),
    }
    print(
      f"profile {name}: {b.wall:.3f} s per step ({_STEPS.value} traced), "
      f"MFU {out[name]['mfu']:.1%}; matmuls run {matmul:.3f} s "
      f"({matmul / b.wall:.1%}) at {out[name]['matmul_time_mfu']:.1%} of peak"
    )
    for row in b.rows():
      print(
        f"  {row['kind']:7s} {row['scope']:22s} {row['seconds']:8.3f} s "
        f"{row['share']:6.1%}"
      )
  _write(
    "bench_stage2_profile.json",
    {
      "buckets": out,
      "matmul_peak": dataclasses.asdict(peak),
      "threads": _threads([]),
      "versions": _versions(),
      "devices": [str(d) for d in jax.devices()][:1] + [len(jax.devices())],
    },
  )


def _train_and_generate(built: _Built, peak, thread_counts) -> None:
  """Times training (ours and the reference's), generation and scoring,
  projects the config's stage 2, writes ``bench_stage2.json``."""
  config, split = built.config, built.split
  llm_config, llm_params, cf = built.llm_config, built.llm_params, built.cf
  model, encoder = built.model, built.encoder
  c = config.stage2
  evaluations = E.parse(c.evaluations)  # the projection counts them
  buckets = tuple(c.length_buckets)
  trie = stage2.build_trie(encoder, llm_config.vocab_size)
  setup = _training(built)
  trainer, frozen, host_params = setup.trainer, setup.frozen, setup.host_params
  share = setup.share
  reference = None
  if thread_counts:
    _check_reference(c)
    theirs = R.SoftTokens(
      model.encoder.qformer_config,
      llm_config.embed_dim,
      model.encoder.soft_prompt,
    )
    reference = R.Stage2Step(
      R.llama_from_params(llm_config, llm_params),
      theirs,
      R.load_encoder_params(theirs, host_params),
      split.num_users,
      cf,
      model.list_tokens,
      model.answer_weighting,
      c.train,
    )
  groups = setup.groups
  timed = _time_training(
    trainer, frozen, host_params, groups, reference, thread_counts
  )
  train, params = timed["ours"], timed["params"]
  flops = {
    name: _step_flops(llm_config, model.encoder.qformer_config, batches[0])
    for name, batches in groups.items()
  }
  padding = {
    name: 1.0 - float(np.mean([b["input_mask"].mean() for b in batches]))
    for name, batches in groups.items()
  }
  users = np.arange(c.eval.batch_size)
  seq = evaluation_prompts(
    split, "test", False, users, P.SEQUENTIAL, c.max_history
  )
  common = dict(batch_size=c.eval.batch_size, buckets=buckets)
  beam = [
    _timed(
      lambda: generative.rank_items(
        model,
        params,
        llm_params,
        cf,
        encoder,
        seq,
        trie,
        num_beams=c.eval.num_beams,
        **common,
      )
    )
    for _ in range(2)
  ]
  desc = text_evaluation_prompts(split, P.DESCRIPTION, False, users)
  text = [
    _timed(
      lambda: generative.generate_texts(
        model,
        params,
        llm_params,
        cf,
        encoder,
        desc,
        max_new_tokens=c.max_answer_tokens,
        **common,
      )
    )
    for _ in range(2)
  ]
  print(f"beam search batch: {beam}, greedy text batch: {text}")
  reranks = E.of_kind(evaluations, E.RERANK)
  scored = []
  if reranks:
    prompts = _rerank_prompts(built, reranks[0].task)
    scored = [
      _timed(
        lambda: score_prompts(
          model,
          params,
          llm_params,
          cf,
          encoder,
          prompts,
          batch_size=int(c.rerank.batch_size),
          buckets=buckets,
        )
      )
      for _ in range(2)
    ]
    print(f"re-ranking batch: {scored}")
  steps = int(c.train.num_steps)
  train_s = sum(
    train[b]["first"] + share[b] * steps * train[b]["step"] for b in train
  )
  users_n = c.eval.max_users if c.eval.max_users > 0 else split.num_users
  item_batches = -(-users_n // c.eval.batch_size)
  item_batches *= len(E.of_kind(evaluations, E.GENERATE))
  text_batches = -(-c.eval.max_text_prompts // c.eval.batch_size)
  text_batches *= len(E.of_kind(evaluations, E.TEXT))
  eval_s = beam[0] + item_batches * beam[1] + text[0] + text_batches * text[1]
  rerank_batches = 0
  if scored:
    rerank_users = (
      c.rerank.max_users if c.rerank.max_users > 0 else split.num_users
    )
    rerank_batches = -(-rerank_users // int(c.rerank.batch_size))
    rerank_batches *= len(reranks)
    eval_s += scored[0] + rerank_batches * scored[1]
  comparison = _compare(train, timed["torch"], flops, share, padding, peak)
  out = {
    "config": {
      "steps": steps,
      "batch_size": int(c.batch_size),
      "buckets": buckets,
      "bucket_share": share,
      "eval_users": users_n,
      "item_eval_batches": item_batches,
      "text_eval_batches": text_batches,
      "qformer_layers": config.qformer.num_layers,
      "queries": config.qformer.num_queries,
      "llm": c.llm,
    },
    "train_seconds_per_bucket": train,
    "torch_train_seconds_per_bucket": timed["torch"],
    "train_step_comparison": comparison,
    "first_step_loss": timed["parity"],
    "matmul_peak": dataclasses.asdict(peak),
    "threads": _threads(thread_counts),
    "versions": _versions(),
    "beam_search_batch_seconds": {"first": beam[0], "steady": beam[1]},
    "greedy_text_batch_seconds": {"first": text[0], "steady": text[1]},
    "rerank_batch_seconds": (
      {"first": scored[0], "steady": scored[1], "batches": rerank_batches}
      if scored
      else None
    ),
    "projected_train_seconds": train_s,
    "projected_eval_seconds": eval_s,
    "devices": [str(d) for d in jax.devices()][:1] + [len(jax.devices())],
  }
  print(json.dumps(out, indent=2, default=str))
  _write("bench_stage2.json", out)
  print(
    f"projected stage 2: train {train_s / 60:.1f} min + eval "
    f"{eval_s / 60:.1f} min = {(train_s + eval_s) / 60:.1f} min"
  )
  _print_comparison(comparison, peak, thread_counts)


def main(argv):
  console.start(argv, memory_policy=_HOST_MEMORY.value)
  if _STEPS.value < 1:
    raise app.UsageError("--steps must be at least 1 (after the first)")
  if (_RERANK.value or _GENERATE.value) and not _REFERENCE.value:
    raise app.UsageError(
      "--rerank and --generate need the reference: drop --noreference"
    )
  if sum((_RERANK.value, _GENERATE.value, _PROFILE.value)) > 1:
    raise app.UsageError("--rerank, --generate and --profile: choose one")
  config = _CONFIG.value
  # Only time is measured: a random Q-Former of stage 1's shape (ILM-rand)
  # needs no stage-1 run in a workdir.
  config.stage2.init = "random"
  built = _build(config)
  threads = []
  if _REFERENCE.value:
    threads = list(dict.fromkeys(int(n) for n in _TORCH_THREADS.value))
  if _GENERATE.value:
    _generate_comparison(built, threads)
    return
  peak = mfu.measure_matmul_peak(jax.tree.leaves(built.llm_params)[0].dtype)
  if _PROFILE.value:
    _profile_training(built, peak)
  elif _RERANK.value:
    _rerank_comparison(built, peak, threads)
  else:
    _train_and_generate(built, peak, threads)


if __name__ == "__main__":
  app.run(main)
