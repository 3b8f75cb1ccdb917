r"""Stage-2 timing on this machine: train step, beam search, greedy text.

Builds stage 2 exactly as ``launch/train.py`` would for --config (real LLM,
prompt mixture, length buckets; a random CF table and Q-Former, since only
time is measured) and times, per length bucket,

* one training step (compile, then the median of --steps more),
* one constrained beam search over ``stage2.eval.batch_size`` sequential
  prompts (compile, then steady),
* one greedy decode of as many item-description prompts,
* one re-ranking scoring call (``stage2.rerank.batch_size`` prompts),

then projects the wall time of the config's stage 2: its training steps
(spread over buckets as its examples are) and its evaluation (users and
the evaluations ``stage2.evaluations`` declares). Writes
``bench_stage2.json`` to --workdir.

  python launch/bench_stage2.py --config=configs/default.py \
      --workdir=workdir/bench_stage2
"""

import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from ilm_jax import console, files
from ilm_jax.convert.frozen_llm import load_stage2_llm
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import make_index
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.encoding import PromptEncoder
from ilm_jax.data.stage2.records import write_stage2_records
from ilm_jax.data.stage2.sampling import (
  evaluation_prompts,
  text_evaluation_prompts,
)
from ilm_jax.eval import evaluations as E
from ilm_jax.eval import generative
from ilm_jax.eval.full_ranking import dot_product_scorer
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
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per bucket (median).")


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.quiet_by_default()
  config = _CONFIG.value
  c = config.stage2
  evaluations = E.parse(c.evaluations)  # the projection counts them
  buckets = tuple(c.length_buckets)
  split = load_split(config.dataset)
  index = make_index(split, config.dataset.indexing, config.seed)
  llm_config, llm_params, tokenizer = load_stage2_llm(c.llm, config.seed)
  rows = split.num_users + split.num_items
  cf = np.random.default_rng(0).normal(size=(rows, config.cf.dim))
  cf = cf.astype(np.float32)
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
  trie = stage2.build_trie(encoder, llm_config.vocab_size)
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
    buckets,
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
  state = trainer.init_state(nn.unbox(boxed))
  frozen = trainer.place_frozen({"llm": llm_params, "cf": cf})
  train = {}
  for length, batches in _group_batches(data, _STEPS.value).items():
    times = []
    for batch in batches:
      placed = trainer.place_batch(batch)

      def step(placed=placed):
        nonlocal state
        state, metrics = trainer.step(state, frozen, placed)
        return metrics

      times.append(_timed(step))
    train[length] = {"first": times[0], "step": statistics.median(times[1:])}
    print(f"train L={length}: first {times[0]:.1f}s, step {train[length]}")
  params = jax.device_get(state.params)
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
    lists = candidates.evaluation_lists(
      split,
      "test",
      np.arange(c.rerank.batch_size),
      dot_product_scorer(cf[: split.num_users], cf[split.num_users :]),
      rerank.list_length(c, ks),
    )
    shown = shown_order(lists, c.rerank.num_candidates, c.rerank.order, 0)
    prompts = rerank_prompts(
      lists,
      shown,
      reranks[0].task,
      False,
      split.catalog,
      c.max_history,
      0,
      True,
    )
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
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "bench_stage2.json")
  files.write_json(path, out, default=str)
  print(json.dumps(out, indent=2, default=str))
  print(
    f"projected stage 2: train {train_s / 60:.1f} min + eval "
    f"{eval_s / 60:.1f} min = {(train_s + eval_s) / 60:.1f} min"
  )


if __name__ == "__main__":
  app.run(main)
