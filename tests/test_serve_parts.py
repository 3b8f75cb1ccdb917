"""The recommender's parts that need no trained model: ALS fold-in, fuzzy
titles, the chat's turn grammar, pruning seen items from the trie."""

import numpy as np
import pytest

from ilm_jax.decode.item_trie import build_item_trie, without_items
from ilm_jax.serve import conversation as conv
from ilm_jax.serve.fold_in import fold_in
from ilm_jax.serve.titles import TitleIndex, TitleNotFoundError, normalise


def test_fold_in_solves_the_users_weighted_least_squares():
  rng = np.random.default_rng(0)
  items = rng.normal(size=(30, 4)).astype(np.float32)
  liked = [3, 7, 7, 12]  # item 7 twice: confidence 1 + 2 alpha
  reg, alpha = 0.5, 10.0
  x = fold_in(items, liked, reg, alpha)
  # The objective written out densely: sum_i c_i (p_i - x.y_i)^2 + reg |x|^2.
  counts = np.bincount(liked, minlength=30).astype(np.float64)
  c = 1 + alpha * counts
  p = (counts > 0).astype(np.float64)
  y = items.astype(np.float64)
  want = np.linalg.solve(
    y.T @ (c[:, None] * y) + reg * np.eye(4), y.T @ (c * p)
  )
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
  # The named items score above the catalogue's median.
  scores = items @ x
  assert np.all(scores[[3, 7, 12]] > np.median(scores))
  assert not np.any(fold_in(items, [], reg, alpha))
  with pytest.raises(ValueError, match=r"\[0, 30\)"):
    fold_in(items, [30], reg, alpha)


TITLES = [
  "Alien (1979)",
  "Aliens (1986)",
  "Terminator 2: Judgment Day (1991)",
  "American President, The (1995)",
  "Alien (2099)",
  "Toy Story (1995)",
]


def test_titles_tolerate_typos_missing_years_and_articles():
  index = TitleIndex(TITLES, popularity=[50, 20, 30, 5, 1, 40])
  assert index.lookup("Alien").item == 0  # the more popular of two Aliens
  assert index.lookup("alien (2099)").item == 4  # a year decides
  assert index.lookup("Aliens").item == 1  # exact beats close
  m = index.lookup("Terminater 2")
  assert (m.item, m.score < 1) == (2, True)
  assert index.lookup("the american president").item == 3
  assert index.lookup("Toy Stroy (1995)").item == 5
  assert normalise("American President, The") == "the american president"
  with pytest.raises(TitleNotFoundError, match="nearest"):
    index.lookup("Aliem Resurrection Returns")


def test_turns_parse_into_clauses_and_context_persists():
  clauses = conv.parse_turn("I liked: Alien; Toy Story | want: something fun")
  assert [(c.kind, c.text) for c in clauses] == [
    (conv.LIKE, "Alien; Toy Story"),
    (conv.WISH, "something fun"),
  ]
  assert conv.parse_turn("  # a comment") == []
  assert conv.parse_turn("a comedy please")[0].kind == conv.WISH
  index = TitleIndex(TITLES)
  context = conv.Context()
  said = conv.apply(context, clauses, index.lookup)
  assert [x.item for x in said] == [0, 5] and context.wish == "something fun"
  conv.apply(
    context, conv.parse_turn("hated: Toy Story; Nope Nope"), index.lookup
  )
  assert context.liked == [0] and context.disliked == [5]
  assert context.wish == "something fun"  # kept until replaced
  conv.apply(context, conv.parse_turn("reset"), index.lookup)
  assert context == conv.Context()
  with pytest.raises(ValueError, match="user: 42"):
    conv.parse_turn("user:")


def test_trie_without_items_never_spells_them_and_keeps_its_shape():
  seqs = [[5, 1, 9], [5, 2, 9], [6, 1, 9], [6, 2, 9]]
  trie = build_item_trie(seqs, vocab_size=10)
  pruned = without_items(trie, [0, 2, 3])
  assert pruned.transitions.shape == trie.transitions.shape
  # Only item 1 remains: 6 leads nowhere now, and 5 only on to 2.
  root = pruned.transitions[0]
  assert root[trie.column_of_token[6]] == -1
  node = root[trie.column_of_token[5]]
  assert pruned.transitions[node, trie.column_of_token[1]] == -1
  assert pruned.item_of([5, 2, 9]) == 1 and pruned.item_of([5, 1, 9]) == -1
