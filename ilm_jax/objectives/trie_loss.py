"""Answer-token likelihoods, optionally restricted to the item trie.

Evaluation with ``stage2.eval.trie_softmax`` scores each identifier token by
a softmax over the tokens the catalogue's trie allows after the answer so
far. Training with ``stage2.trie_loss`` uses the same distribution: on a
row whose answer is an item identifier, every answer token's cross-entropy
is taken over the trie's allowed tokens at that prefix only, so the gradient
goes to telling catalogue branches apart rather than to pushing digits above
the rest of the vocabulary. Tokens with a single allowed continuation (the
``item`` ``_`` prefix every identifier shares) then cost nothing. Rows whose
answer is text (descriptions, titles) keep the full-vocabulary loss.

A row counts as an identifier answer when its whole answer walks the trie
from the root to an item; the trie's arrays reach the jitted step as part of
the frozen tree (``ItemTrie.loss_data``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite stand-in for a disallowed token's logit: -inf would turn masked-off
# positions into NaNs in the gradient of the unselected branch.
_OFF = -1e9


def walk_answers(targets: jax.Array, mask: jax.Array, trie: dict):
  """Trie nodes along each row's answer, teacher forced.

  Args:
    targets: int32[B, P] answer tokens.
    mask: bool[B, P], True on answer tokens (a prefix of each row).
    trie: ``ItemTrie.loss_data``: transitions int32[N, A + 1],
      column_of_token int32[V], item_at_node int32[N], alphabet int32[A].

  Returns:
    (int32[B, P] the node before each answer token (-1 once off the trie),
    bool[B] rows whose whole answer spells an item).
  """
  transitions = jnp.asarray(trie["transitions"])
  columns = jnp.asarray(trie["column_of_token"])
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  vocab = columns.shape[0]

  def advance(node, step):
    token, on = step
    column = columns[jnp.clip(token, 0, vocab - 1)]
    nxt = transitions[jnp.maximum(node, 0), column]
    nxt = jnp.where(node >= 0, nxt, -1)
    return jnp.where(on, nxt, node), node

  start = jnp.zeros(targets.shape[:1], jnp.int32)
  last, before = jax.lax.scan(advance, start, (targets.T, mask.T))
  item_at_node = jnp.asarray(trie["item_at_node"])
  spells = (last >= 0) & (item_at_node[jnp.maximum(last, 0)] >= 0)
  return before.T, spells & mask.any(axis=1)


def answer_token_nll(
  logits: jax.Array, targets: jax.Array, mask: jax.Array, trie=None
):
  """Per-token negative log-likelihood of the answers.

  Args:
    logits: float32[B, P, V] logits that predict each answer token.
    targets: int32[B, P] answer tokens.
    mask: bool[B, P], True on answer tokens.
    trie: None for the full-vocabulary softmax everywhere, or
      ``ItemTrie.loss_data`` to restrict identifier answers to the trie.

  Returns:
    (float32[B, P] nll, float32[B, P] 1 where the prediction's argmax under
    the same distribution is the target, bool[B] rows scored on the trie
    (all False without one)).
  """
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
  correct = jnp.argmax(logits, axis=-1) == targets
  on_trie = jnp.zeros(targets.shape[:1], bool)
  if trie is None:
    return nll, correct.astype(jnp.float32), on_trie
  nodes, on_trie = walk_answers(targets, mask, trie)
  alphabet = jnp.asarray(trie["alphabet"])
  # Allowed alphabet columns after each prefix (the last column, tokens
  # outside the alphabet, is never allowed).
  transitions = jnp.asarray(trie["transitions"])
  rows = transitions[jnp.maximum(nodes, 0)][..., : alphabet.shape[0]]
  allowed = (rows >= 0) & (nodes >= 0)[..., None]
  restricted = jnp.where(allowed, jnp.take(logits, alphabet, axis=-1), _OFF)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  trie_nll = jax.nn.logsumexp(restricted, axis=-1) - target_logit[..., 0]
  trie_correct = alphabet[jnp.argmax(restricted, axis=-1)] == targets
  use = on_trie[:, None] & mask
  return (
    jnp.where(use, trie_nll, nll),
    jnp.where(use, trie_correct, correct).astype(jnp.float32),
    on_trie,
  )
