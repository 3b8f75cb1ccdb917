"""Stage 2's generative evaluations: ranking by generation and text tasks.

Runs the declared ``generate`` and ``text`` evaluations
(``ilm_jax.eval.evaluations``): for an item task (sequential,
straightforward, conversational) the trained ILM ranks the catalogue for
held-out users by trie-constrained beam search (and, with the retrieval
head, by its full ranking); for a text task (item description, user
profile) it decodes answers greedily, scored by semantic consistency and
title accuracy. Re-ranking retrieved candidates is ``ilm_jax.rerank.stage``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ml_collections
import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.sampling import (
  evaluation_prompts,
  text_evaluation_prompts,
)
from ilm_jax.eval import evaluations as E
from ilm_jax.eval import generative, identifier_agreement, retrieval
from ilm_jax.eval import metrics as M
from ilm_jax.eval.evaluations import Evaluation
from ilm_jax.eval.trained_ilm import TrainedIlm


def _eval_users(c, split, seed):
  rng = np.random.default_rng(seed)
  users = np.arange(split.num_users)
  if 0 < c.eval.max_users < len(users):
    users = np.sort(rng.choice(users, c.eval.max_users, replace=False))
  return users


def _text_entities(c, split, task, users, described, seed):
  """Items (description) or users (profile) whose answers are decoded.

  Descriptions prefer items no training prompt described, so title accuracy
  measures what the soft tokens carry rather than a memorised answer.
  """
  n = c.eval.max_text_prompts
  if task == P.PROFILE:
    return users[:n] if n > 0 else users
  rng = np.random.default_rng([seed, 1])
  items = rng.permutation(split.num_items)
  fresh = items[~np.isin(items, np.fromiter(described, np.int64))]
  order = np.concatenate([fresh, items[np.isin(items, fresh, invert=True)]])
  return order[:n] if n > 0 else order


def _generate(c, split, ilm, evaluation, users, held_out, items, seed):
  """Result entry of one ``generate`` evaluation.

  ``held_out`` is (targets [U], seen items per user) of its split.
  """
  targets, seen_items = held_out
  common = dict(batch_size=c.eval.batch_size, buckets=tuple(c.length_buckets))
  prompts = evaluation_prompts(
    split,
    evaluation.split,
    evaluation.seen,
    users,
    evaluation.task,
    c.max_history,
    seed,
  )
  start = time.time()
  exclude_seen = bool(c.eval.get("exclude_seen", False))
  trie_softmax = bool(c.eval.get("trie_softmax", False))
  ranked = generative.rank_items(
    *ilm.inputs,
    prompts,
    ilm.trie,
    num_beams=c.eval.num_beams,
    exclude=seen_items if exclude_seen else None,
    renormalize=trie_softmax,
    **common,
  )
  metrics = generative.list_metrics(ranked, targets, seen_items)
  metrics["seconds"] = time.time() - start
  metrics["users"] = len(users)
  entry = evaluation.entry(
    metrics=metrics, exclude_seen=exclude_seen, trie_softmax=trie_softmax
  )
  # Per-user ranks (the filtered lists' MISS when absent), so two runs
  # evaluated on the same users compare paired (metrics.paired_comparison).
  entry["user_ranks"] = {
    "users": [int(u) for u in users],
    "filtered": M.ranks_from_lists(
      generative.filter_seen(ranked, seen_items), targets
    ).tolist(),
  }
  index = ilm.prompt_encoder.item_index
  entry["identifiers"] = identifier_agreement.summary(
    ranked,
    targets,
    seen_items,
    index.codes,
    index.identifiers,
    np.bincount(
      np.concatenate(split.train_sequences), minlength=split.num_items
    ),
    c.eval.keep_examples,
  )
  if items is not None:
    start = time.time()
    queries = retrieval.prompt_queries(*ilm.inputs, prompts, **common)
    full = retrieval.retrieval_metrics(queries, items, targets, seen_items)
    full["seconds"] = time.time() - start
    entry["retrieval"] = full
  return entry


def _text(c, split, ilm, evaluation, entities, keep_examples):
  """Result entry of one ``text`` evaluation, or None without prompts."""
  prompts = text_evaluation_prompts(
    split, evaluation.task, evaluation.seen, entities
  )
  if not prompts:
    return None
  start = time.time()
  generated = generative.generate_texts(
    *ilm.inputs,
    prompts,
    max_new_tokens=c.max_answer_tokens,
    batch_size=c.eval.batch_size,
    buckets=tuple(c.length_buckets),
  )
  refs = [p.answer for p in prompts]
  titles = split.catalog.item_fields.get("title")
  item_titles = None
  if evaluation.task == P.DESCRIPTION and titles is not None:
    item_titles = [str(titles[p.entities()[0][1]]) for p in prompts]
  metrics = generative.text_metrics(generated, refs, item_titles)
  metrics["seconds"] = time.time() - start
  examples = [
    {"generated": g, "reference": r}
    for g, r in list(zip(generated, refs))[:keep_examples]
  ]
  return evaluation.entry(metrics=metrics, examples=examples)


def evaluate(
  c: ml_collections.ConfigDict,
  split: LeaveOneOutSplit,
  ilm: TrainedIlm,
  evaluations: Sequence[Evaluation],
  seed: int = 0,
  described=(),
) -> dict[str, dict]:
  """Runs the ``generate`` and ``text`` evaluations of ``evaluations``.

  Every entry is ``Evaluation.entry``: the evaluation's fields plus
  ``"metrics"``. A ``generate`` entry's metrics are HR@k / NDCG@k (filtered
  and unfiltered), with the retrieval head also ``"retrieval"``: its full
  ranking's metrics. A ``text`` entry's metrics are semantic consistency
  (and title accuracy for item descriptions), beside ``"examples"``: a few
  generated texts ([{"generated", "reference"}]).

  Args:
    c: ``config.stage2``.
    split: the leave-one-out split.
    ilm: the trained ILM and its inputs.
    evaluations: the declared evaluations; other kinds are skipped.
    seed: seeds user / item choice.
    described: items that training description prompts used.

  Returns:
    {evaluation name: entry}, in declared order (a text evaluation with no
    prompts is left out).
  """
  users = _eval_users(c, split, seed)
  items = None
  if ilm.model.retrieval_weight > 0:
    items = retrieval.catalogue_vectors(
      ilm.model, ilm.encoder_params, ilm.cf, split.num_items
    )
  held_out, entities, out = {}, {}, {}
  for evaluation in evaluations:
    if evaluation.kind == E.GENERATE:
      if evaluation.split not in held_out:
        held_out[evaluation.split] = (
          split.targets(evaluation.split)[users],
          [split.history_all(int(u), evaluation.split) for u in users],
        )
      out[evaluation.name] = _generate(
        c,
        split,
        ilm,
        evaluation,
        users,
        held_out[evaluation.split],
        items,
        seed,
      )
    elif evaluation.kind == E.TEXT:
      if evaluation.task not in entities:
        entities[evaluation.task] = _text_entities(
          c, split, evaluation.task, users, described, seed
        )
      entry = _text(
        c,
        split,
        ilm,
        evaluation,
        entities[evaluation.task],
        c.eval.keep_examples,
      )
      if entry is not None:
        out[evaluation.name] = entry
  return out
