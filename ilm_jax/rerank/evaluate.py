"""Re-ranking evaluation: score each user's candidates, reorder, measure.

Each held-out user's top N retrieved items are scored by the ILM in one
forward pass (``ItemLanguageModel.candidate_scores``: the log-likelihood of
each candidate's answer after the prompt) and reordered by score; items past
N keep the retriever's order. HR@k / NDCG@k are therefore over the full
catalogue (seen items removed, as in filtered full ranking) and directly
comparable with the retriever's own full ranking. Beside every result stand
two nulls: the retriever's order and its top N shuffled (seeded).
"""

from __future__ import annotations

import time

import numpy as np

from ilm_jax.eval import metrics as M
from ilm_jax.eval.generative import per_prompt
from ilm_jax.rerank.candidates import CandidateLists

NULLS = ("retriever", "shuffled")


def score_prompts(
  model,
  encoder_params,
  llm_params,
  cf_table,
  prompt_encoder,
  prompts,
  *,
  batch_size: int,
  buckets,
) -> np.ndarray:
  """float32[R, N] candidate log-likelihoods, in each prompt's list order."""
  return per_prompt(
    model.candidate_scores,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    batch_size=batch_size,
    buckets=buckets,
  )


def reorder(ranked: np.ndarray, shown: np.ndarray, scores: np.ndarray):
  """Full lists: the top N by score, then the retriever's tail.

  Args:
    ranked: int32[R, L] retriever lists, best first.
    shown: int32[R, N] the top N in prompt order (a permutation of
      ``ranked[:, :N]``).
    scores: float[R, N] score of ``shown[r, j]``; ties keep the
      retriever's order.

  Returns:
    int32[R, L].
  """
  n = shown.shape[1]
  out = ranked.copy()
  for r in range(len(ranked)):
    retriever_rank = {int(i): k for k, i in enumerate(ranked[r, :n])}
    order = sorted(
      range(n), key=lambda j: (-scores[r, j], retriever_rank[int(shown[r, j])])
    )
    out[r, :n] = shown[r, order]
  return out


def shuffled_null(ranked: np.ndarray, n: int, seed: int) -> np.ndarray:
  """The retriever's lists with each top N shuffled (seeded)."""
  rng = np.random.default_rng([seed, 13])
  out = ranked.copy()
  for r in range(len(ranked)):
    out[r, :n] = ranked[r, rng.permutation(n)]
  return out


def evaluate_lists(
  lists: CandidateLists,
  shown: np.ndarray,
  scores: np.ndarray,
  ks=M.DEFAULT_KS,
  seed: int = 0,
) -> dict:
  """Metrics of the re-ranked lists beside both nulls.

  Returns:
    {"ilm": {metric: value, metric_se: SE, ...}, "retriever": {...},
    "shuffled": {...}, "vs_retriever": paired comparison, "vs_shuffled":
    paired comparison} (``metrics.paired_comparison``), and "ranks":
    {"ilm", "retriever"}: int64[R] each list's rank of its target.
  """
  n = shown.shape[1]
  lists_by_name = {
    "ilm": reorder(lists.ranked, shown, scores),
    "retriever": lists.ranked,
    "shuffled": shuffled_null(lists.ranked, n, seed),
  }
  ranks = {
    name: M.ranks_from_lists(ranked, lists.targets)
    for name, ranked in lists_by_name.items()
  }
  out = {name: M.metrics_from_ranks(r, ks) for name, r in ranks.items()}
  for null in NULLS:
    out[f"vs_{null}"] = M.paired_comparison(ranks["ilm"], ranks[null], ks)
  out["ranks"] = {name: ranks[name] for name in ("ilm", "retriever")}
  return out


def evaluate_task(
  model,
  encoder_params,
  llm_params,
  cf_table,
  prompt_encoder,
  lists,
  shown,
  prompts,
  *,
  batch_size,
  buckets,
  ks=M.DEFAULT_KS,
  seed=0,
) -> dict:
  """Scores ``prompts`` (one per list) and evaluates (``evaluate_lists``),
  adding "seconds"."""
  start = time.time()
  scores = score_prompts(
    model,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    batch_size=batch_size,
    buckets=buckets,
  )
  out = evaluate_lists(lists, shown, scores, ks, seed)
  out["seconds"] = time.time() - start
  return out
