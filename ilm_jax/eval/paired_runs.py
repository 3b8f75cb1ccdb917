"""Two runs' evaluations compared user by user.

Every ``generate`` and ``rerank`` entry of a stage-2 ``results.json`` keeps
its users' ranks (``user_ranks``: "users" and, per ranking, int ranks;
generation: "filtered", re-ranking: "ilm" and "retriever"). Two runs
evaluated on the same users (e.g. one recipe with and without a change)
then compare paired, whose standard error is the honest yardstick for a
difference (``metrics.paired_comparison``).
"""

from __future__ import annotations

import json
import pathlib

from ilm_jax.eval import metrics as M

# The ranking an entry of each kind is judged by.
DEFAULT_RANKS = {"generate": "filtered", "rerank": "ilm"}


def user_ranks(path: str | pathlib.Path, evaluation: str, ranking: str = ""):
  """(users, int ranks) of ``evaluation``'s ``ranking`` in a results file.

  Args:
    path: a stage-2 ``results.json``.
    evaluation: the entry's name ("rerank:rerank:test:unseen:sasrec").
    ranking: which ranks ("" = the kind's ``DEFAULT_RANKS``).

  Raises:
    ValueError: naming the file, when the entry, its ranks or the ranking
      is missing.
  """
  results = json.loads(pathlib.Path(path).read_text())
  entry = results.get("evaluations", {}).get(evaluation)
  if entry is None:
    known = ", ".join(results.get("evaluations", {})) or "none"
    raise ValueError(f"{path}: no evaluation {evaluation!r} (it has: {known})")
  kept = entry.get("user_ranks")
  if kept is None:
    raise ValueError(
      f"{path}: {evaluation!r} kept no per-user ranks (evaluated before "
      "they were recorded: evaluate it again)"
    )
  ranking = ranking or DEFAULT_RANKS.get(entry.get("kind"), "filtered")
  if ranking not in kept:
    names = sorted(k for k in kept if k != "users")
    raise ValueError(f"{path}: {evaluation!r} has no {ranking!r} ranks {names}")
  return kept["users"], kept[ranking]


def compare(
  path_a, path_b, evaluation: str, ranking_a: str = "", ranking_b: str = ""
) -> dict[str, dict]:
  """Run A minus run B on ``evaluation``, user by user.

  Returns:
    ``metrics.paired_comparison``'s {"HR@5": {"diff", "se", "verdict"},
    ...} and "users": the number of users.

  Raises:
    ValueError: the runs were evaluated on different users.
  """
  users_a, ranks_a = user_ranks(path_a, evaluation, ranking_a)
  users_b, ranks_b = user_ranks(path_b, evaluation, ranking_b)
  if users_a != users_b:
    raise ValueError(
      f"{path_a} and {path_b} evaluated {evaluation!r} on different users "
      f"({len(users_a)} and {len(users_b)}): no paired comparison"
    )
  out = M.paired_comparison(ranks_a, ranks_b)
  out["users"] = len(users_a)
  return out
