"""How close generated identifiers come to the held-out item's, digit by digit.

HR@10 over a catalogue of a thousand items or more moves only once the model
spells the exact item. With collaborative identifiers (items close in CF
space share prefixes: ``data.indexing``) a model that has learned the coarse
levels of the tree shows it long before: its first choice falls in the
held-out item's cluster. For each user the top generated identifier is
compared with the held-out item's, and for every prefix length n the share of
users whose two codes agree on their first n digits is reported beside
chance: the share a catalogue item drawn uniformly would reach (for each
user, the fraction of the catalogue sharing the held-out code's first n
digits, averaged over users), the same for an item drawn in proportion to
its training interactions, and the agreement of the user's latest history
item (a model that only copies the history's latest prefix reaches that).
The top identifier is the one generated, seen items included (HR/NDCG filter
those). Prefix lengths every code shares (the leading digit of equal-length
codes) say nothing and are left out, as is the whole code (that is HR@1).

Random identifiers carry no collaborative structure, so there agreement
above chance can only come from popularity (popular items sharing digits).
"""

from __future__ import annotations

import numpy as np

from ilm_jax.eval.metrics import SE_SUFFIX


def _digits(codes) -> list[str]:
  return [str(int(c)) for c in codes]


def _shared_prefix(a: str, b: str) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def prefix_agreement(
  top_items: np.ndarray,
  targets: np.ndarray,
  codes: np.ndarray,
  popularity: np.ndarray | None = None,
  last_items: np.ndarray | None = None,
) -> list[dict[str, float]]:
  """Agreement of the top generated code with the held-out one, per length.

  Args:
    top_items: int[U], each user's first generated item (-1 = none, which
      agrees with nothing).
    targets: int[U], each user's held-out item.
    codes: int[I], every catalogue item's identifier number
      (``ItemIndex.codes``).
    popularity: optional float[I], training interactions per item: adds
      ``popularity_chance``, the agreement of an item drawn in proportion
      to them.
    last_items: optional int[U], each user's latest history item (-1 =
      none): adds ``last_item``, the agreement of naming it again (a model
      that copies the history's latest prefix reaches this).

  Returns:
    One dict per informative prefix length, shortest first: ``digits`` (n),
    ``agreement`` (share of users; with its binomial standard error under
    ``agreement_se``), ``chance`` and the optional references.
  """
  top_items = np.asarray(top_items, np.int64)
  targets = np.asarray(targets, np.int64)
  if top_items.shape != targets.shape or top_items.ndim != 1:
    raise ValueError(
      f"top_items {top_items.shape} and targets {targets.shape} must be "
      "int[U] of one shape"
    )
  if not len(targets):
    return []
  catalogue = _digits(codes)
  longest = max(len(c) for c in catalogue)

  def shared_with_targets(items):
    return np.array(
      [
        _shared_prefix(catalogue[t], catalogue[i]) if i >= 0 else 0
        for i, t in zip(np.asarray(items, np.int64), targets)
      ]
    )

  shared = shared_with_targets(top_items)
  copied = None if last_items is None else shared_with_targets(last_items)
  out = []
  for n in range(1, longest):
    # Chance per user: how much of the catalogue shares its target's prefix.
    uniform = _share_of_prefix(catalogue, n, np.ones(len(catalogue)))
    chance = np.array([uniform[catalogue[t][:n]] for t in targets])
    if np.allclose(chance, 1.0, rtol=0.0, atol=1e-9):
      continue  # every code starts so: uninformative
    hit = (shared >= n).astype(np.float64)
    p = float(hit.mean())
    level = {
      "digits": n,
      "agreement": p,
      "agreement" + SE_SUFFIX: float(np.sqrt(p * (1 - p) / len(hit))),
      "chance": float(chance.mean()),
    }
    if popularity is not None:
      weighted = _share_of_prefix(catalogue, n, popularity)
      level["popularity_chance"] = float(
        np.mean([weighted[catalogue[t][:n]] for t in targets])
      )
    if copied is not None:
      level["last_item"] = float(np.mean(copied >= n))
    out.append(level)
  return out


def _share_of_prefix(catalogue: list[str], n: int, weights) -> dict:
  """{first n digits: share of ``weights`` on the codes starting so}."""
  weights = np.asarray(weights, np.float64)
  total = float(weights.sum())
  shares: dict[str, float] = {}
  for code, w in zip(catalogue, weights):
    shares[code[:n]] = shares.get(code[:n], 0.0) + w / total
  return shares


def summary(
  ranked: np.ndarray,
  targets: np.ndarray,
  histories,
  codes: np.ndarray,
  identifiers,
  popularity: np.ndarray | None = None,
  keep_examples: int = 5,
  history_shown: int = 5,
) -> dict:
  """What a ``generate`` evaluation's identifiers show beyond HR/NDCG.

  Args:
    ranked: int[U, W] generated items best first (-1 = empty beam).
    targets: int[U] held-out items.
    histories: per user, the items before the held-out one, oldest first.
    codes: int[I] identifier numbers of the catalogue.
    identifiers: the catalogue's identifier strings (``ItemIndex``).
    popularity: optional float[I] training interactions per item
      (``prefix_agreement``).
    keep_examples: users whose lists are kept as examples.
    history_shown: latest history items shown in an example.

  Returns:
    {"prefix_agreement": ``prefix_agreement`` of the top items,
    "distinct_top1": distinct first items over users, "distinct_listed":
    distinct items over all lists (a model that says the same list to
    everyone has 1 and W), "examples": [{"history", "target", "generated"}]}.
  """
  ranked = np.asarray(ranked)

  def named(items):
    return [identifiers[int(i)] for i in items if int(i) >= 0]

  listed = ranked[ranked >= 0]
  last = np.array([int(h[-1]) if len(h) else -1 for h in histories])
  return {
    "prefix_agreement": prefix_agreement(
      ranked[:, 0], targets, codes, popularity, last
    ),
    "distinct_top1": int(len(np.unique(ranked[:, 0][ranked[:, 0] >= 0]))),
    "distinct_listed": int(len(np.unique(listed))),
    "examples": [
      {
        "history": named(list(histories[u])[-history_shown:]),
        "target": identifiers[int(targets[u])],
        "generated": named(ranked[u]),
      }
      for u in range(min(keep_examples, len(ranked)))
    ],
  }
