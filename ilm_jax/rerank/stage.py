"""The re-ranking part of stage 2: its config, training prompts, evaluation.

Training prompts come from the inner retriever's lists (``candidates``),
kept where the held-out item is among the top N (a list without it teaches
nothing about choosing). Evaluation re-ranks the evaluated retriever's top
N for every held-out user (``rerank.max_users = -1``) for each declared
``rerank`` evaluation (``ilm_jax.eval.evaluations``: task, split, template
set), beside the retriever's order, the shuffled list and popularity, all
with standard errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from ilm_jax.cf.table import CFTable
from ilm_jax.data import prompts as P
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.sampling import evaluation_prompts
from ilm_jax.eval import full_ranking, retrieval
from ilm_jax.eval import metrics as M
from ilm_jax.eval.evaluations import RERANK, RETRIEVERS, Evaluation, of_kind
from ilm_jax.eval.trained_ilm import TrainedIlm
from ilm_jax.rerank import candidates as C
from ilm_jax.rerank import evaluate as E
from ilm_jax.rerank.prompts import rerank_prompts, shown_order

# Inner retrievers whose lists can train re-ranking (``candidates``,
# ``inner_sasrec``).
TRAIN_RETRIEVERS = ("als", "sasrec")
# A retriever trained outside stage 2 (SASRec): split name -> score
# function (int32[B] users -> float32[B, I] scores).
ScorerFactory = Callable[[str], Callable]


def retrievers_used(c, evaluations: Sequence[Evaluation]) -> set[str]:
  """The retrievers whose candidates the ``rerank`` evaluations take."""
  return {
    e.retriever or c.rerank.retriever for e in of_kind(evaluations, RERANK)
  }


def check_config(
  c: ml_collections.ConfigDict, evaluations: Sequence[Evaluation] = ()
) -> None:
  if c.rerank.retriever not in RETRIEVERS:
    raise ValueError(
      f"stage2.rerank.retriever {c.rerank.retriever!r} not in {RETRIEVERS}"
    )
  if (
    "retrieval_head" in retrievers_used(c, evaluations)
    or c.rerank.retriever == "retrieval_head"
  ) and c.retrieval_weight <= 0:
    raise ValueError(
      "re-ranking the retrieval head's candidates needs a trained head: set "
      "stage2.retrieval_weight > 0"
    )
  if c.rerank.num_candidates < 2:
    raise ValueError("stage2.rerank.num_candidates must be >= 2")
  names = train_retrievers(c)
  if (
    not names
    or set(names) - set(TRAIN_RETRIEVERS)
    or len(set(names)) < len(names)
  ):
    raise ValueError(
      f"stage2.rerank.train_retrievers {names!r}: distinct names of "
      f"{TRAIN_RETRIEVERS}, at least one"
    )


def list_length(c, ks) -> int:
  """Items retrieved per list: N candidates, or more for a tail up to k."""
  return max(int(c.rerank.num_candidates), max(ks))


# A retriever whose inner lists train re-ranking, besides the inner ALS:
# (holdout, list length) -> (CandidateLists, info), e.g. a bound
# ``inner_sasrec.training_lists``.
InnerLists = Callable[[int, int], tuple[C.CandidateLists, dict]]


def train_retrievers(c) -> tuple[str, ...]:
  """The inner retrievers whose lists train re-ranking (``rerank``
  ``train_retrievers``; configs from before the field: the inner ALS)."""
  return tuple(c.rerank.get("train_retrievers", ("als",)))


def training_prompts(
  c,
  split,
  als_config,
  ks,
  seed,
  mesh=None,
  inner: Mapping[str, InnerLists] | None = None,
):
  """(re-ranking training prompts, their list statistics).

  Each retriever of ``train_retrievers(c)`` lists every held-out position;
  ``rerank.examples_per_task`` prompts per task are drawn from the lists
  holding their target, shared evenly between the retrievers.

  Args:
    c: ``config.stage2``.
    split: the leave-one-out split.
    als_config: ALS hyper-parameters (``cf_stage.als_config``).
    ks: metric cut-offs (the list length covers them).
    seed: seeds sampling, shuffling and templates.
    mesh: optional device mesh for the inner ALS.
    inner: the other retrievers' inner lists by name (``"sasrec"``).

  Returns:
    (prompts, {"lists": the inner ALS's rank summary (``rank_summary``),
    "lists_<name>" for each other retriever, "usable_lists" (lists holding
    their target, all retrievers), "positions", each retriever's seconds}).
  """
  tasks = [t for t in c.tasks if t in P.RERANK_TASKS]
  if not tasks:
    return [], {}
  r = c.rerank
  n = int(r.num_candidates)
  holdout, length = int(r.train_holdout), list_length(c, ks)
  names = train_retrievers(c)
  stats, by_retriever = {}, []
  for name in names:
    if name == "als":
      lists, info = C.training_lists(split, als_config, holdout, length, mesh)
    elif inner and name in inner:
      lists, info = inner[name](holdout, length)
    else:
      raise ValueError(
        f"stage2.rerank.train_retrievers: no inner {name!r} retriever"
      )
    stats["lists" if name == "als" else f"lists_{name}"] = C.rank_summary(
      lists, n
    )
    stats.update(info)
    by_retriever.append((lists, np.flatnonzero(lists.target_ranks(n) >= 0)))
  rng = np.random.default_rng([seed, 5])
  prompts = []
  per_retriever = -(-int(r.examples_per_task) // len(names))  # ceiling
  for task in tasks:
    for lists, keep in by_retriever:
      rows = rng.permutation(keep)[:per_retriever]
      chosen = lists.subset(rows)
      shown = shown_order(chosen, n, r.order, seed + len(prompts))
      prompts += rerank_prompts(
        chosen, shown, task, True, split.catalog, c.max_history, seed, False
      )
  # Lists holding their target, summed over the retrievers.
  stats["usable_lists"] = sum(len(keep) for _, keep in by_retriever)
  return prompts, stats


def evaluation_users(c, split, seed) -> np.ndarray:
  users = np.arange(split.num_users)
  m = int(c.rerank.max_users)
  if 0 < m < len(users):
    rng = np.random.default_rng([seed, 3])
    users = np.sort(rng.choice(users, m, replace=False))
  return users


def _head_scorer(c, split, split_name, users, ilm: TrainedIlm, seed):
  """score_fn of the retrieval head: each user's sequential-prompt query
  against every item's adapted embedding."""
  prompts = evaluation_prompts(
    split, split_name, True, users, P.SEQUENTIAL, c.max_history, seed
  )
  queries = retrieval.prompt_queries(
    *ilm.inputs,
    prompts,
    batch_size=int(c.rerank.batch_size),
    buckets=tuple(c.length_buckets),
  )
  items = retrieval.catalogue_vectors(
    ilm.model, ilm.encoder_params, ilm.cf, split.num_items
  )
  per_user = np.zeros((split.num_users, queries.shape[1]), np.float32)
  per_user[users] = queries
  return full_ranking.dot_product_scorer(per_user, items)


def evaluate(
  c: ml_collections.ConfigDict,
  split: LeaveOneOutSplit,
  ilm: TrainedIlm,
  cf: CFTable,
  ks: tuple[int, ...],
  evaluations: Sequence[Evaluation],
  seed: int = 0,
  scorers: Mapping[str, ScorerFactory] | None = None,
) -> dict[str, dict]:
  """Runs the ``rerank`` evaluations of ``evaluations``.

  Candidate lists and their shown order are built once per (split,
  retriever), popularity's ranks once per split, and shared by the
  evaluations that use them.

  Args:
    c: ``config.stage2``.
    split: the split.
    ilm: the trained ILM and its inputs.
    cf: the CFTable (the ALS retriever).
    ks: cut-offs.
    evaluations: the declared evaluations; other kinds are skipped.
    seed: seeds shuffling, wishes, user sampling.
    scorers: retrievers trained elsewhere by name (``"sasrec"``), each a
      ``ScorerFactory``; ALS and the retrieval head are built here.

  Returns:
    {evaluation name: ``Evaluation.entry`` with "metrics": {"ilm",
    "retriever", "shuffled", "popularity": metrics with SEs,
    "vs_retriever", "vs_shuffled": paired comparisons, "lists": the
    target's rank distribution, "order", "labels", "num_candidates",
    "retrieved_by", "seconds"}}, in declared order.
  """
  reranks = of_kind(evaluations, RERANK)
  if not reranks:
    return {}
  r = c.rerank
  n = int(r.num_candidates)
  users = evaluation_users(c, split, seed)
  als = full_ranking.dot_product_scorer(cf.users, cf.items)
  _, train_items = split.train_interactions()
  popularity = full_ranking.popularity_scorer(train_items, split.num_items)
  out, pop_ranks = {}, {}
  for split_name, retriever in dict.fromkeys(
    (e.split, e.retriever or r.retriever) for e in reranks
  ):
    if retriever == "als":
      score_fn = als
    elif retriever == "retrieval_head":
      score_fn = _head_scorer(c, split, split_name, users, ilm, seed)
    elif scorers and retriever in scorers:
      score_fn = scorers[retriever](split_name)
    else:
      raise ValueError(f"re-ranking: no {retriever!r} retriever was given")
    lists = C.evaluation_lists(
      split, split_name, users, score_fn, list_length(c, ks)
    )
    shown = shown_order(lists, n, r.order, seed)
    if split_name not in pop_ranks:
      pop_ranks[split_name] = full_ranking.rank_targets(
        popularity,
        users,
        lists.targets,
        split.num_items,
        split.seen_items(split_name),  # indexed by user
        batch_size=min(full_ranking.DEFAULT_BATCH, len(users)),
      )
    for evaluation in (
      e
      for e in reranks
      if (e.split, e.retriever or r.retriever) == (split_name, retriever)
    ):
      prompts = rerank_prompts(
        lists,
        shown,
        evaluation.task,
        evaluation.seen,
        split.catalog,
        c.max_history,
        seed,
        True,
      )
      result = E.evaluate_task(
        *ilm.inputs,
        lists,
        shown,
        prompts,
        batch_size=int(r.batch_size),
        buckets=tuple(c.length_buckets),
        ks=ks,
        seed=seed,
      )
      ranks = result.pop("ranks")
      result["popularity"] = M.metrics_from_ranks(pop_ranks[split_name], ks)
      result["lists"] = C.rank_summary(lists, n)
      result.update(
        order=r.order,
        labels=r.labels,
        num_candidates=n,
        retrieved_by=retriever,
      )
      # Per-user ranks (MISS past the list), so two runs evaluated on the
      # same users compare paired, as generate entries do.
      out[evaluation.name] = evaluation.entry(
        metrics=result,
        user_ranks={
          "users": [int(u) for u in users],
          **{name: v.tolist() for name, v in ranks.items()},
        },
      )
  return {e.name: out[e.name] for e in reranks}
