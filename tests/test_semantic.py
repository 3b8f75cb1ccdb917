"""Semantic consistency: our Flax MiniLM vs sentence-transformers; titles."""

import os

import numpy as np
import pytest

from ilm_jax.eval import semantic

SENTENCES = [
  "Toy Story (1995); genres: Adventure, Animation, Children, Comedy",
  "A cowboy doll is threatened by a new spaceman figure.",
  "Likes Drama, Comedy and Thriller; often tagged: twist ending.",
  "Heat (1995); genres: Action, Crime, Thriller",
  "",
  "word " * 300,  # longer than the 256-token limit: truncated alike
]
# (generated, reference, should the pair be close?)
PAIRS = [
  (
    "Toy Story (1995); genres: Animation, Comedy",
    "Toy Story (1995); genres: Adventure, Animation, Children, Comedy",
    True,
  ),
  ("Likes Comedy and Romance.", "Likes Romance, Comedy and Drama.", True),
  (
    "Heat (1995); genres: Action, Crime",
    "Likes Children and Animation.",
    False,
  ),
  (
    "Alien (1979); genres: Horror, Sci-Fi",
    "Babe (1995); genres: Children",
    False,
  ),
]


@pytest.fixture(scope="module")
def embedder():
  try:
    return semantic.SentenceEmbedder(batch_size=4)
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def reference_model(embedder):
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  st = pytest.importorskip("sentence_transformers")
  from ilm_jax.convert.bert import minilm_dir

  return st.SentenceTransformer(str(minilm_dir()), device="cpu")


def test_embeddings_match_sentence_transformers(embedder, reference_model):
  ours = embedder(SENTENCES)
  theirs = reference_model.encode(
    SENTENCES, normalize_embeddings=True, convert_to_numpy=True
  )
  assert ours.shape == theirs.shape == (len(SENTENCES), 384)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  cos = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
  assert np.all(cos > 1 - 1e-5), cos
  np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_semantic_consistency_of_sentence_pairs(embedder, reference_model):
  gen = [g for g, _, _ in PAIRS]
  ref = [r for _, r, _ in PAIRS]
  ours = semantic.semantic_consistency(gen, ref, embedder)
  a = reference_model.encode(gen, normalize_embeddings=True)
  b = reference_model.encode(ref, normalize_embeddings=True)
  np.testing.assert_allclose(ours, np.sum(a * b, axis=1), atol=1e-4)
  close = np.array([c for _, _, c in PAIRS])
  # every related pair scores above every unrelated one
  assert ours[close].min() > ours[~close].max()
  # identical text is perfectly consistent
  same = semantic.semantic_consistency(gen, gen, embedder)
  np.testing.assert_allclose(same, 1.0, atol=1e-5)


def test_semantic_consistency_rejects_mismatched_lists(embedder):
  with pytest.raises(ValueError, match="matching"):
    semantic.semantic_consistency(["a"], ["a", "b"], embedder)


def test_title_matches():
  generated = [
    "Toy Story (1995); genres: Comedy",
    "  toy  story (1995) ",
    "Toy Story 2 (1999); genres: Comedy",
    "",
  ]
  titles = ["Toy Story (1995)"] * 4
  np.testing.assert_array_equal(
    semantic.title_matches(generated, titles), [True, True, False, False]
  )
  assert semantic.title_of("A; b; c") == "A"
  with pytest.raises(ValueError):
    semantic.title_matches(["a"], [])
