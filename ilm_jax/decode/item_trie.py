"""A prefix trie over the token ids of every valid item identifier.

Plugged into ``beam_search(allowed_fn=allowed_by_trie,
constraint_data=trie.constraint_data)``, it lets each beam continue
only with tokens that extend some identifier's token sequence (which ends in
EOS), so every finished beam is an existing item and the beams form a ranked
list over the whole catalogue.

Identifiers use a handful of distinct tokens (``item``, ``_``, digits, EOS),
so the trie is a dense table over that small *alphabet*: ``transitions[node,
column]`` is the next node or -1, and ``column_of_token`` maps the LLM's
vocabulary onto alphabet columns (tokens outside it map to a column that is
-1 everywhere). Both reach the jitted search as traced arguments, so a new
catalogue of the same table shape reuses the compiled search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

NO_NODE = -1


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (static)
class ItemTrie:
  """Token-level trie of item identifiers.

  Attributes:
    transitions: int32[num_nodes, A + 1] next node per alphabet column, -1
      where no identifier continues so; node 0 is the root.
    column_of_token: int32[V] alphabet column of each vocabulary id (A for
      tokens no identifier uses).
    item_at_node: int32[num_nodes] the item whose full sequence ends at a
      node, else -1.
    max_length: tokens of the longest identifier sequence (EOS included).
  """

  transitions: np.ndarray
  column_of_token: np.ndarray
  item_at_node: np.ndarray
  max_length: int

  @property
  def num_nodes(self) -> int:
    return int(self.transitions.shape[0])

  @property
  def constraint_data(self) -> tuple[np.ndarray, np.ndarray]:
    """(transitions, column_of_token): what ``allowed_by_trie`` reads."""
    return self.transitions, self.column_of_token

  @property
  def alphabet(self) -> np.ndarray:
    """int32[A] the vocabulary id of each alphabet column."""
    tokens = np.flatnonzero(
      self.column_of_token < self.transitions.shape[1] - 1
    )
    out = np.zeros(self.transitions.shape[1] - 1, np.int32)
    out[self.column_of_token[tokens]] = tokens
    return out

  @property
  def loss_data(self) -> dict[str, np.ndarray]:
    """The arrays ``objectives.trie_loss`` reads (a frozen pytree)."""
    return {
      "transitions": self.transitions,
      "column_of_token": self.column_of_token,
      "item_at_node": self.item_at_node,
      "alphabet": self.alphabet,
    }

  @property
  def forced_prefix(self) -> tuple[int, ...]:
    """Tokens every identifier starts with (e.g. ``item`` ``_``): the chain
    of nodes from the root with a single child and no item ending there.
    Beam search feeds them once per prompt (``forced_tokens``)."""
    token_of_column = self.alphabet
    out, node = [], 0
    while True:
      children = np.flatnonzero(self.transitions[node] >= 0)
      if len(children) != 1 or self.item_at_node[node] >= 0:
        return tuple(out)
      child = int(self.transitions[node, children[0]])
      if self.item_at_node[child] >= 0:  # the token ends an identifier
        return tuple(out)
      out.append(int(token_of_column[children[0]]))
      node = child

  def __call__(self, generated: jax.Array, step: jax.Array) -> jax.Array:
    """bool[B, W, V] allowed next tokens (``allowed_by_trie`` on this trie)."""
    return allowed_by_trie(generated, step, self.constraint_data)

  def item_of(self, tokens: Sequence[int]) -> int:
    """The item a generated token sequence spells (-1 if none).

    Tokens after the sequence's end (padding) are ignored.
    """
    node = 0
    for token in tokens:
      token = int(token)
      if not 0 <= token < len(self.column_of_token):
        return -1
      node = int(self.transitions[node, self.column_of_token[token]])
      if node < 0:
        return -1
      if self.item_at_node[node] >= 0:
        return int(self.item_at_node[node])
    return -1


def _next_rows(transitions: jax.Array, node: jax.Array) -> jax.Array:
  """int32[B, W, A + 1] transition rows of each beam's node: one table
  int32[num_nodes, A + 1] for every prompt, or one per prompt
  int32[B, num_nodes, A + 1] (``stacked_without``)."""
  if transitions.ndim == 2:
    return transitions[node]
  prompts = jnp.arange(node.shape[0]).reshape((-1,) + (1,) * (node.ndim - 1))
  return transitions[prompts, node]


def walk_trie(generated: jax.Array, step: jax.Array, data) -> jax.Array:
  """int32[B, W] node each beam's first ``step`` tokens lead to (-1: off).

  Args:
    generated: int32[B, W, N] tokens generated so far.
    step: int32[] how many of them count.
    data: ``ItemTrie.constraint_data``, or the same with a table of
      transitions per prompt (``stacked_without``).
  """
  transitions, columns = (jnp.asarray(x) for x in data)
  vocab = columns.shape[0]

  def advance(t, node):
    token = jnp.clip(generated[..., t], 0, vocab - 1)
    nxt = _next_rows(transitions, jnp.maximum(node, 0))
    nxt = jnp.take_along_axis(nxt, columns[token][..., None], axis=-1)[..., 0]
    return jnp.where((t < step) & (node >= 0), nxt, node)

  start = jnp.zeros(generated.shape[:-1], jnp.int32)
  return jax.lax.fori_loop(0, generated.shape[-1], advance, start)


def allowed_by_trie(generated: jax.Array, step: jax.Array, data) -> jax.Array:
  """The beam-search hook: allowed next tokens of each beam.

  Args:
    generated: int32[B, W, N] tokens generated so far (only the first
      ``step`` count).
    step: int32[] tokens generated so far.
    data: ``ItemTrie.constraint_data`` (traced arrays).

  Returns:
    bool[B, W, V], True where the token keeps the beam on an identifier.
  """
  transitions, columns = (jnp.asarray(x) for x in data)
  node = walk_trie(generated, step, data)
  rows = _next_rows(transitions, jnp.maximum(node, 0))  # [B, W, A + 1]
  allowed = jnp.take(rows, columns, axis=-1) >= 0  # [B, W, V]
  return allowed & (node >= 0)[..., None]


def build_item_trie(sequences: Sequence[Sequence[int]], vocab_size: int):
  """Builds the trie of item ``i``'s token sequence ``sequences[i]``.

  Args:
    sequences: per item, its identifier's token ids ending in EOS.
    vocab_size: V, the LLM's vocabulary size (logit width).

  Returns:
    An ItemTrie.

  Raises:
    ValueError: an empty sequence, a token outside the vocabulary, two items
      with the same tokens, or one item's tokens a prefix of another's.
  """
  alphabet = sorted({int(t) for seq in sequences for t in seq})
  if alphabet and not (0 <= alphabet[0] and alphabet[-1] < vocab_size):
    raise ValueError(f"item token ids must lie in [0, {vocab_size})")
  column = {t: c for c, t in enumerate(alphabet)}
  width = len(alphabet) + 1
  rows = [[NO_NODE] * width]
  item_at = [-1]
  for item, seq in enumerate(sequences):
    if not len(seq):
      raise ValueError(f"item {item} has an empty identifier sequence")
    node = 0
    for pos, token in enumerate(seq):
      if item_at[node] >= 0:
        raise ValueError(
          f"item {item_at[node]}'s tokens are a prefix of item {item}'s"
        )
      c = column[int(token)]
      nxt = rows[node][c]
      if nxt == NO_NODE:
        nxt = len(rows)
        rows.append([NO_NODE] * width)
        item_at.append(-1)
        rows[node][c] = nxt
      elif pos == len(seq) - 1:
        other = item_at[nxt]
        raise ValueError(
          f"items {other if other >= 0 else '?'} and {item} share token "
          "sequence (or one is a prefix of the other)"
        )
      node = nxt
    item_at[node] = item
  column_of_token = np.full(vocab_size, len(alphabet), np.int32)
  column_of_token[alphabet] = np.arange(len(alphabet), dtype=np.int32)
  return ItemTrie(
    transitions=np.asarray(rows, np.int32),
    column_of_token=column_of_token,
    item_at_node=np.asarray(item_at, np.int32),
    max_length=max(len(s) for s in sequences),
  )


def ranked_items(trie: ItemTrie, tokens: np.ndarray) -> np.ndarray:
  """Item indices of beam-search output, best first (-1: no valid item).

  A beam that spells an item already ranked higher is a duplicate and
  becomes -1, so each item appears once.

  Args:
    trie: the trie that constrained the search.
    tokens: int[N, W, T] beams of each prompt, best first.

  Returns:
    int32[N, W].
  """
  tokens = np.asarray(tokens)
  out = np.full(tokens.shape[:2], -1, np.int32)
  for n in range(tokens.shape[0]):
    seen = set()
    for w in range(tokens.shape[1]):
      item = trie.item_of(tokens[n, w])
      if item >= 0 and item not in seen:
        out[n, w] = item
        seen.add(item)
  return out


def without_items(trie: ItemTrie, items) -> ItemTrie:
  """The same trie with ``items`` unreachable (e.g. what a user has seen).

  Branches that lead to no remaining item are cut, so a beam never walks
  into a dead end; the tables keep their shapes, so the compiled search is
  reused.

  Args:
    trie: a trie from ``build_item_trie``.
    items: item indices to drop.
  """
  drop = np.zeros(int(trie.item_at_node.max(initial=-1)) + 1, bool)
  items = np.asarray(list(items), np.int64)
  drop[items[(items >= 0) & (items < len(drop))]] = True
  at = trie.item_at_node
  alive = (at >= 0) & ~drop[np.maximum(at, 0)]
  # Deepest level first: a node lives if an item ends there or a child lives.
  for nodes in reversed(_levels(trie.transitions)):
    children = trie.transitions[nodes]
    living = (children >= 0) & alive[np.maximum(children, 0)]
    alive[nodes] |= living.any(axis=1)
  transitions = np.where(
    (trie.transitions >= 0) & alive[np.maximum(trie.transitions, 0)],
    trie.transitions,
    NO_NODE,
  ).astype(np.int32)
  return dataclasses.replace(trie, transitions=transitions)


def _levels(transitions: np.ndarray) -> list[np.ndarray]:
  """Node indices by depth, the root's level first."""
  levels = [np.zeros(1, np.int64)]
  while True:
    children = transitions[levels[-1]]
    children = children[children >= 0]
    if not len(children):
      return levels
    levels.append(np.unique(children))


def stacked_without(trie: ItemTrie, item_sets) -> np.ndarray:
  """int32[B, num_nodes, A + 1]: prompt b's transitions without
  ``item_sets[b]`` (``without_items``), for one batched search in which each
  prompt names only items its user has not seen; with ``trie.column_of_token``
  it is constraint data for ``allowed_by_trie``."""
  return np.stack([without_items(trie, s).transitions for s in item_sets])
