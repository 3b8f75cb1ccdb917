"""Re-ranking training lists from an inner SASRec.

The inner ALS (``candidates.training_lists``) gives lists shaped like ALS's;
an ILM that re-ranks SASRec's candidates at evaluation then trains on lists
of another retriever, whose targets sit elsewhere in the list (SASRec puts
more of them in its first five). This module gives the same held-out
positions a SASRec's lists: SASRec (``config.sasrec``) trained on every
user's training sequence minus its last ``holdout`` items
(``candidates.inner_split``'s cut), then, at each held-out position, its
top L items after the sequence before that position (those items removed).
Like the inner ALS it never trained on a target it lists for.

Its state lives in ``<workdir>/sasrec_inner`` (resumable; the holdout is
part of its provenance, so a run with another holdout is refused there).
"""

from __future__ import annotations

import pathlib
import time

import jax
import ml_collections
import numpy as np

from ilm_jax.data import sasrec as sasrec_data
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.pipeline import sasrec as sasrec_stage
from ilm_jax.rerank.candidates import (
  CandidateLists,
  held_examples,
  inner_split,
  top_items,
)

STAGE_DIR = "sasrec_inner"


def inner_sequence_split(split: LeaveOneOutSplit, holdout: int):
  """(the split SASRec trains on, held-out (user, position) pairs).

  Its training sequences are ``split``'s cut as the inner ALS's data are
  (at least one item kept, up to ``holdout`` last items held out); its
  validation item, which only the in-training validation reads, is each
  user's first held-out item (the outer one for a user with none).
  """
  _, _, held = inner_split(split, holdout)
  kept = [max(1, len(s) - holdout) for s in split.train_sequences]
  valid = np.asarray(
    [
      seq[k] if k < len(seq) else split.valid_items[u]
      for u, (seq, k) in enumerate(zip(split.train_sequences, kept))
    ],
    np.int32,
  )
  inner = LeaveOneOutSplit(
    split.name,
    split.catalog,
    [np.asarray(s[:k], np.int32) for s, k in zip(split.train_sequences, kept)],
    valid,
    split.test_items,
    split.max_history,
  )
  return inner, held


def training_lists(
  config: ml_collections.ConfigDict,
  split: LeaveOneOutSplit,
  holdout: int,
  length: int,
  workdir: str | pathlib.Path,
) -> tuple[CandidateLists, dict]:
  """Lists of every held-out position from the inner SASRec (module doc).

  Args:
    config: the experiment config (``sasrec``, ``dataset``, ``eval``,
      ``mesh``).
    split: the leave-one-out split (only its training sequences are read).
    holdout: training items held out per user (their last ones).
    length: L items retrieved per example.
    workdir: the experiment directory (the state goes to ``STAGE_DIR``).

  Returns:
    (lists in ``inner_split``'s order of positions, {"inner_sasrec_seconds",
    "positions"}).
  """
  start = time.time()
  inner, held = inner_sequence_split(split, holdout)
  model, params, _ = sasrec_stage.train_sasrec(
    config,
    config.sasrec,
    inner,
    pathlib.Path(workdir) / STAGE_DIR,
    extra_provenance={"inner_holdout": int(holdout)},
  )
  users, histories, targets = held_examples(split, held)
  # The scorer reads row r of these for "user" r: here one row per example.
  read = sasrec_data.right_aligned(histories, int(model.config.max_len))
  ranked = top_items(
    sasrec_stage.scorer(model, jax.device_get(params), read),
    np.arange(len(held), dtype=np.int32),
    histories,
    length,
    split.num_items,
  )
  lists = CandidateLists(users, histories, targets, ranked)
  return lists, {
    "inner_sasrec_seconds": time.time() - start,
    "positions": len(held),
  }
