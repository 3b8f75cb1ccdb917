"""ALS fold-in: the CF vector of a user who was not in the training data.

Implicit ALS (``ilm_jax.cf.als``) solves each user's regularised least
squares against the item factors with the items fixed. A new user's vector
is that same solve with the user's items alone:

  x = (Y^T Y + lambda I + Y^T (C - I) Y)^-1  Y^T C p,

confidence ``c_i = 1 + alpha * count_i`` on the named items (``p_i = 1``)
and 1 elsewhere (``p_i = 0``). It is exactly the vector the next ALS
sweep would give this user, so the dot-product retriever and the
soft-token encoder see a vector from the space they were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fold_in(
  item_factors: np.ndarray,
  items: Sequence[int],
  reg: float,
  alpha: float,
) -> np.ndarray:
  """The ALS user vector of someone who consumed ``items``.

  Args:
    item_factors: float[I, d] the CF table's item rows (Y).
    items: item indices the user consumed; repeats count as more
      interactions.
    reg: the ALS regularisation lambda (``config.cf.reg``).
    alpha: the ALS confidence slope (``config.cf.alpha``).

  Returns:
    float32[d]; zeros when ``items`` is empty (no evidence, no preference).

  Raises:
    ValueError: an item index outside [0, I).
  """
  y = np.asarray(item_factors, np.float64)
  num_items, dim = y.shape
  items = np.asarray(items, np.int64).reshape(-1)
  if not len(items):
    return np.zeros(dim, np.float32)
  if items.min() < 0 or items.max() >= num_items:
    raise ValueError(
      f"fold_in: item indices must lie in [0, {num_items}), got "
      f"{sorted(set(items[(items < 0) | (items >= num_items)].tolist()))}"
    )
  cols, counts = np.unique(items, return_counts=True)
  confidence = 1.0 + alpha * counts.astype(np.float64)  # [n]
  yu = y[cols]  # [n, d]
  # Y^T Y covers every item at confidence 1; the named items add c - 1.
  gram = y.T @ y + reg * np.eye(dim)
  gram += (yu * (confidence - 1.0)[:, None]).T @ yu
  rhs = yu.T @ confidence  # Y^T C p, p = 1 on the named items
  return np.linalg.solve(gram, rhs).astype(np.float32)
