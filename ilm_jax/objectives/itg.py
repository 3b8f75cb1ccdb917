"""Item-grounded text generation (ITG): next-token loss of text given queries.

The text starts with a decoder token instead of [CLS] (BLIP-2's [DEC]) and
attends causally to itself and to all queries (see ``QFormer`` "causal").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def decoder_inputs(token_ids: jax.Array, decoder_id: int) -> jax.Array:
  """int32[B, L] ids with the first ([CLS]) token replaced by decoder_id."""
  return jnp.asarray(token_ids).at[:, 0].set(decoder_id)


def itg_loss(
  logits: jax.Array,
  token_ids: jax.Array,
  text_mask: jax.Array,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy over real target tokens.

  Position t predicts token t + 1; padding targets are ignored.

  Args:
    logits: float32[B, L, V].
    token_ids: int32[B, L] (the original ids; targets are ids[:, 1:]).
    text_mask: int32[B, L], 1 = real token.
    label_smoothing: BLIP-2 uses 0.1; 0 = plain cross-entropy.

  Returns:
    (scalar loss, metrics with "acc": next-token accuracy).
  """
  logits = logits[:, :-1]
  targets = token_ids[:, 1:]
  weights = text_mask[:, 1:].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    smooth = -jnp.mean(log_probs, axis=-1)
    nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  denom = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(nll * weights) / denom
  acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / denom
  return loss, {"acc": acc}
