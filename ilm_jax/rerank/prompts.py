"""Re-ranking prompts from candidate lists, for training and evaluation.

A prompt shows the user, the recent history and (conversational task) a
wish in words, then the top N candidates, in the retriever's order or
shuffled with a seed (``order``); the model names one candidate.
"""

from __future__ import annotations

import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.stage2.sampling import GENERIC_WISH
from ilm_jax.rerank.candidates import CandidateLists

ORDERS = ("retriever", "shuffled")


def shown_order(
  lists: CandidateLists, num_candidates: int, order: str, seed: int
) -> np.ndarray:
  """int32[R, N]: the top N of each list in the order a prompt shows them."""
  if order not in ORDERS:
    raise ValueError(f"rerank.order {order!r} not in {ORDERS}")
  top = lists.ranked[:, :num_candidates]
  if order == "retriever":
    return top.copy()
  rng = np.random.default_rng([seed, 7])
  return np.stack([row[rng.permutation(len(row))] for row in top])


def rerank_prompts(
  lists: CandidateLists,
  shown: np.ndarray,
  task: str,
  seen: bool,
  catalog,
  max_history: int,
  seed: int,
  rotate: bool,
) -> list[P.Prompt]:
  """One prompt per list.

  Args:
    lists: the examples and their retrieved lists.
    shown: int32[R, N] candidates in prompt order (``shown_order``).
    task: P.RERANK or P.RERANK_CONVERSATIONAL.
    seen: training (True) or held-out (False) templates.
    catalog: the split's catalog (wishes come from the target's genres).
    max_history: most recent history items shown.
    seed: seeds template choice (training) and wishes.
    rotate: rotate templates over examples (evaluation) instead of drawing
      them at random (training).

  Returns:
    Prompts without answers (the encoder names the target's candidate).
  """
  if task not in P.RERANK_TASKS:
    raise ValueError(f"re-ranking tasks are {P.RERANK_TASKS}, not {task!r}")
  choices = P.templates(task, seen)
  rng = np.random.default_rng([seed, 11, P.RERANK_TASKS.index(task)])
  out = []
  for r in range(len(lists.targets)):
    target = int(lists.targets[r])
    n = r % len(choices) if rotate else int(rng.integers(len(choices)))
    wish = ""
    if task == P.RERANK_CONVERSATIONAL:
      wish = P.wish_text(catalog, target, rng) or GENERIC_WISH
    history = np.asarray(lists.histories[r])[-max_history:]
    out.append(
      P.render(
        choices[n],
        user=int(lists.users[r]),
        history=history,
        wish=wish,
        target_item=target,
        candidates=shown[r],
      )
    )
  return out
