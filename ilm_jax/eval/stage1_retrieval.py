"""Stage-1 evaluation: item-to-text, item-item and user-item retrieval.

* item-to-text recall@k: each item's query features rank the texts of *all*
  items with text (similarity = best query); a hit is its own text in the
  top k. Chance is k / number of items.
* held-out II / UI: the last training item (II) or the user (UI) ranks every
  item by max-over-query-pairs similarity; the target is the validation item,
  which no training pair contains. Reported as recall@k over all items and as
  accuracy: top-1 among the target and ``num_candidates - 1`` random items.
  Ranked over all items, a user's own training items compete with the
  target, and the better the Q-Former models behaviour the more they do; so
  recall@k is also reported filtered (``*_heldout_filtered_recall_at_k``),
  those items left out as the stage-2 and baseline evaluations do.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ilm_jax.cf.table import ITEM_TYPE, USER_TYPE
from ilm_jax.data.stage1 import Stage1Examples
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives.contrastive import max_pair_similarity
from ilm_jax.objectives.itc import item_text_similarity


def _batched(fn, arrays: tuple[np.ndarray, ...], batch_size: int):
  """fn over fixed-size batches (the last padded), concatenated on host."""
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    chunk = [a[start : start + batch_size] for a in arrays]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
    out.append(np.asarray(fn(*chunk))[: batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0,))


# Params are arguments, not closed-over constants, so one compilation per
# (model, batch shape) serves every evaluation of a run.
@functools.partial(jax.jit, static_argnums=0)
def _entity_features(model: Stage1Model, params, cf, types):
  return model.apply(
    {"params": params}, cf, types, method=Stage1Model.entity_features
  )


@functools.partial(jax.jit, static_argnums=0)
def _text_features(model: Stage1Model, params, token_ids, mask):
  return model.apply(
    {"params": params}, token_ids, mask, method=Stage1Model.text_features
  )


def encode_entities(model, params, cf_table, rows, types, batch_size):
  """float32[N, K, E] features of CF-table rows."""
  cf_table = np.asarray(cf_table)
  return _batched(
    lambda r, t: _entity_features(model, params, cf_table[r], t),
    (np.asarray(rows), np.asarray(types, np.int32)),
    batch_size,
  )


def encode_texts(model, params, token_ids, text_mask, batch_size):
  """float32[N, E] features of tokenised texts."""
  return _batched(
    lambda ids, mask: _text_features(model, params, ids, mask),
    (token_ids, text_mask),
    batch_size,
  )


@functools.partial(jax.jit, static_argnames="kind")
def _scores(queries, keys, kind: str):
  if kind == "text":
    return item_text_similarity(queries, keys)
  return max_pair_similarity(queries, keys)


def _ranks(queries, keys, targets, kind, excluded=None, chunk=64):
  """int[N]: how many keys score strictly above each query's target.

  ``excluded`` (N arrays of key indices, none of them the target) leaves
  those keys out of query i's ranking.
  """
  ranks = []
  for start in range(0, len(queries), chunk):
    s = np.array(_scores(queries[start : start + chunk], keys, kind))
    if excluded is not None:
      for row, left_out in enumerate(excluded[start : start + chunk]):
        s[row, left_out] = -np.inf
    own = s[np.arange(len(s)), targets[start : start + chunk]]
    ranks.append(np.sum(s > own[:, None], axis=1))
  return np.concatenate(ranks)


def item_to_text_recall(item_feats, text_feats, k: int) -> float:
  """Recall@k of each item's own text among all texts (row i <-> text i)."""
  n = len(item_feats)
  return float(
    np.mean(_ranks(item_feats, text_feats, np.arange(n), "text") < k)
  )


def heldout_retrieval(
  query_feats, targets, item_feats, k: int, num_candidates: int, seed: int
) -> tuple[float, float]:
  """(recall@k over all items, top-1 accuracy among num_candidates).

  A catalogue of at most ``num_candidates`` items makes every item a
  candidate (the accuracy is then top-1 over the whole catalogue).
  """
  recall = filtered_recall(query_feats, targets, item_feats, k, None)
  rng = np.random.default_rng(seed)
  n_items = len(item_feats)
  num_candidates = min(int(num_candidates), n_items)
  hits = []
  for start in range(0, len(query_feats), 64):
    q = query_feats[start : start + 64]
    t = targets[start : start + 64]
    s = np.asarray(_scores(q, item_feats, "entity"))
    for row, target in zip(s, t):
      negatives = rng.choice(n_items - 1, num_candidates - 1, replace=False)
      negatives = negatives + (negatives >= target)  # skip the target
      hits.append(row[target] > row[negatives].max())
  return recall, float(np.mean(hits))


def filtered_recall(query_feats, targets, item_feats, k: int, seen) -> float:
  """Recall@k of each target among all items but query i's ``seen[i]`` (a
  user's training items, the target not among them; None: all items)."""
  ranks = _ranks(query_feats, item_feats, targets, "entity", seen)
  return float(np.mean(ranks < k))


def evaluate(
  model: Stage1Model,
  params,
  cf_table: np.ndarray,
  num_users: int,
  examples: Stage1Examples,
  token_ids: np.ndarray | None,
  text_mask: np.ndarray | None,
  *,
  k: int = 10,
  num_candidates: int = 100,
  batch_size: int = 256,
  seed: int = 0,
) -> dict[str, float]:
  """All stage-1 retrieval metrics for the given params.

  Returns:
    {"i2t_recall_at_k", "ii_heldout_recall_at_k", "ii_heldout_acc",
    "ui_heldout_recall_at_k", "ui_heldout_acc", "i2t_chance_at_k",
    "ii_heldout_filtered_recall_at_k", "ui_heldout_filtered_recall_at_k",
    "item_chance_at_k"} (text metrics only when items have text).
  """
  num_items = cf_table.shape[0] - num_users
  item_feats = encode_entities(
    model,
    params,
    cf_table,
    np.arange(num_items) + num_users,
    np.full(num_items, ITEM_TYPE),
    batch_size,
  )
  out = {f"item_chance_at_{k}": k / num_items}
  if examples.has_text and token_ids is not None:
    text_feats = encode_texts(model, params, token_ids, text_mask, batch_size)
    own = item_feats[examples.text_items]
    out[f"i2t_recall_at_{k}"] = item_to_text_recall(own, text_feats, k)
    out[f"i2t_chance_at_{k}"] = k / len(examples.text_items)
  for name, pairs, seen, user_queries in (
    ("ii", examples.heldout_ii, examples.heldout_ii_seen, False),
    ("ui", examples.heldout_ui, examples.heldout_ui_seen, True),
  ):
    if not len(pairs):
      continue
    if user_queries:
      queries = encode_entities(
        model,
        params,
        cf_table,
        pairs[:, 0],
        np.full(len(pairs), USER_TYPE),
        batch_size,
      )
    else:
      queries = item_feats[pairs[:, 0]]
    recall, acc = heldout_retrieval(
      queries, pairs[:, 1], item_feats, k, num_candidates, seed
    )
    out[f"{name}_heldout_recall_at_{k}"] = recall
    out[f"{name}_heldout_acc"] = acc
    out[f"{name}_heldout_filtered_recall_at_{k}"] = filtered_recall(
      queries, pairs[:, 1], item_feats, k, seen
    )
  return out
