"""Stage 2's generative evaluations: ranking by generation and text tasks.

For each item task (sequential, straightforward, conversational) the trained
ILM ranks the catalogue for held-out users by trie-constrained beam search
(and, with the retrieval head, by its full ranking); for the text tasks
(item description, user profile) it decodes answers greedily, scored by
semantic consistency and title accuracy; each with seen and unseen
templates. Re-ranking retrieved candidates is ``ilm_jax.rerank.stage``.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.sampling import (
  evaluation_prompts,
  text_evaluation_prompts,
)
from ilm_jax.eval import generative, retrieval
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


def evaluate(
  c: ml_collections.ConfigDict,
  split: LeaveOneOutSplit,
  ilm: TrainedIlm,
  seed: int = 0,
  described=(),
  examples: dict | None = None,
) -> dict:
  """Generative metrics per task, split and template set.

  Item tasks give ``"{task}/{split}/{templates}"`` -> HR@k / NDCG@k
  (filtered and unfiltered), and with the retrieval head also
  ``"retrieval/{task}/{split}/{templates}"`` (full ranking); text tasks
  give ``"{task}/{templates}"`` -> semantic consistency (and title
  accuracy for item descriptions).

  Args:
    c: ``config.stage2``.
    split: the leave-one-out split.
    ilm: the trained ILM and its inputs.
    seed: seeds user / item choice.
    described: items that training description prompts used.
    examples: a dict that receives a few generated texts per text task
      (``"{task}/{templates}"`` -> [{"generated", "reference"}]), or None.

  Returns:
    {key: {metric: float}}.
  """
  users = _eval_users(c, split, seed)
  tasks = tuple(c.eval.tasks)
  out = {}
  common = dict(batch_size=c.eval.batch_size, buckets=tuple(c.length_buckets))
  items = None
  if ilm.model.retrieval_weight > 0:
    items = retrieval.catalogue_vectors(
      ilm.model, ilm.encoder_params, ilm.cf, split.num_items
    )
  for task in (t for t in tasks if t in P.ITEM_TASKS):
    for split_name in c.eval.splits:
      targets = split.targets(split_name)[users]
      seen_items = [split.history_all(int(u), split_name) for u in users]
      for templates in c.eval.templates:
        prompts = evaluation_prompts(
          split, split_name, templates == "seen", users, task,
          c.max_history, seed,
        )  # fmt: skip
        start = time.time()
        ranked = generative.rank_items(
          *ilm.inputs, prompts, ilm.trie, num_beams=c.eval.num_beams,
          **common,
        )  # fmt: skip
        metrics = generative.list_metrics(ranked, targets, seen_items)
        metrics["seconds"] = time.time() - start
        metrics["users"] = len(users)
        out[f"{task}/{split_name}/{templates}"] = metrics
        if items is not None:
          start = time.time()
          queries = retrieval.prompt_queries(*ilm.inputs, prompts, **common)
          metrics = retrieval.retrieval_metrics(
            queries, items, targets, seen_items
          )
          metrics["seconds"] = time.time() - start
          out[f"retrieval/{task}/{split_name}/{templates}"] = metrics
  titles = split.catalog.item_fields.get("title")
  for task in (t for t in tasks if t in (P.DESCRIPTION, P.PROFILE)):
    entities = _text_entities(c, split, task, users, described, seed)
    for templates in c.eval.templates:
      prompts = text_evaluation_prompts(
        split, task, templates == "seen", entities
      )
      if not prompts:
        continue
      start = time.time()
      generated = generative.generate_texts(
        *ilm.inputs, prompts, max_new_tokens=c.max_answer_tokens, **common
      )
      refs = [p.answer for p in prompts]
      item_titles = None
      if task == P.DESCRIPTION and titles is not None:
        item_titles = [str(titles[p.entities()[0][1]]) for p in prompts]
      metrics = generative.text_metrics(generated, refs, item_titles)
      metrics["seconds"] = time.time() - start
      out[f"{task}/{templates}"] = metrics
      if examples is not None:
        examples[f"{task}/{templates}"] = [
          {"generated": g, "reference": r}
          for g, r in list(zip(generated, refs))[: c.eval.keep_examples]
        ]
  return out
