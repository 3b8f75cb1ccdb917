"""SASRec: self-attentive sequential recommendation (Kang & McAuley, 2018).

A stack of causal self-attention blocks reads a user's item history,
right-aligned and left-padded, with learned absolute positions. The hidden
state at position t predicts the item at t + 1 by its dot product with that
item's input embedding: the embedding table is also the output layer, so one
matrix product scores the whole catalogue.

Item ``i`` of the catalogue is row ``i + 1`` of the table; row 0 is padding,
which the data pipeline writes as ``PAD = -1``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

PAD = -1  # padding item in histories, positives and negatives
# A finite "minus infinity": a padded query row whose every key is masked
# then attends uniformly instead of producing NaN (its output is zeroed).
_MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  """The shape of a SASRec model.

  Attributes:
    num_items: I, the catalogue size.
    max_len: L, positions (longer histories keep their last L items).
    dim: D, embedding and hidden width.
    num_blocks: self-attention blocks.
    num_heads: attention heads (D must divide by it).
    dropout: dropout rate on embeddings, attention weights and FFN.
  """

  num_items: int
  max_len: int = 50
  dim: int = 64
  num_blocks: int = 2
  num_heads: int = 1
  dropout: float = 0.2

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(
        f"dim {self.dim} is not divisible by num_heads {self.num_heads}"
      )


_GLOROT = nn.initializers.glorot_uniform()


def _init(axes: tuple[str, ...], init=_GLOROT):
  """``init`` with logical axis names on the parameter it creates."""
  return nn.with_logical_partitioning(init, axes)


class LayerNorm(nn.Module):
  """LayerNorm with logically named scale and bias."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
      epsilon=1e-8,
      scale_init=_init(("norm",), nn.initializers.ones),
      bias_init=_init(("norm",), nn.initializers.zeros),
    )(x)


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention where position t sees positions <= t only."""

  config: SASRecConfig

  @nn.compact
  def __call__(
    self, x: jax.Array, valid: jax.Array, deterministic: bool
  ) -> jax.Array:
    """float32[B, L, D] attended values.

    Args:
      x: float32[B, L, D] (normalised) inputs.
      valid: bool[B, L], False at padding.
      deterministic: no dropout.
    """
    cfg = self.config
    head_dim = cfg.dim // cfg.num_heads
    shape = (cfg.dim, cfg.num_heads, head_dim)
    axes = ("embed", "heads", "head_dim")
    q, k, v = (
      jnp.einsum("bld,dhk->blhk", x, self.param(name, _init(axes), shape))
      for name in ("query", "key", "value")
    )
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / jnp.sqrt(head_dim)
    length = x.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    # Padding keys are never attended to; a padded query's output is
    # discarded by the caller.
    mask = causal[None, None] & valid[:, None, None, :]
    weights = jax.nn.softmax(jnp.where(mask, logits, _MASKED), axis=-1)
    weights = nn.Dropout(cfg.dropout)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqs,bshk->bqhk", weights, v)
    w_out = self.param(
      "out",
      _init(("heads", "head_dim", "embed")),
      (cfg.num_heads, head_dim, cfg.dim),
    )
    return jnp.einsum("bqhk,hkd->bqd", out, w_out)


class Block(nn.Module):
  """Pre-LN transformer block: causal attention, then a pointwise FFN."""

  config: SASRecConfig

  @nn.compact
  def __call__(
    self, x: jax.Array, valid: jax.Array, deterministic: bool
  ) -> jax.Array:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout)
    h = CausalSelfAttention(cfg, name="attention")(
      LayerNorm(name="attention_norm")(x), valid, deterministic
    )
    x = x + drop(h, deterministic=deterministic)
    h = LayerNorm(name="ffn_norm")(x)
    # SASRec's "point-wise feed-forward": two D x D layers, ReLU between.
    for i in range(2):
      h = nn.Dense(
        cfg.dim,
        kernel_init=_init(("embed", "mlp")),
        bias_init=_init(("mlp",), nn.initializers.zeros),
        name=f"ffn_{i}",
      )(h)
      if i == 0:
        h = drop(nn.relu(h), deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    # Padding stays exactly zero from block to block.
    return x * valid[..., None]


class SASRec(nn.Module):
  """The SASRec encoder and its catalogue scorer.

  ``__call__`` encodes histories; ``user_vectors`` and ``score_all`` are the
  retrieval interface (``model.apply(..., method=...)``).
  """

  config: SASRecConfig

  def setup(self):
    cfg = self.config
    # Item i at row i + 1; row 0 (padding) is masked out wherever it enters.
    self.item_embedding = self.param(
      "item_embedding",
      _init(("vocab", "embed"), nn.initializers.normal(stddev=0.02)),
      (cfg.num_items + 1, cfg.dim),
    )
    self.position_embedding = self.param(
      "position_embedding",
      _init(("length", "embed"), nn.initializers.normal(stddev=0.02)),
      (cfg.max_len, cfg.dim),
    )
    self.blocks = [Block(cfg, name=f"block_{i}") for i in range(cfg.num_blocks)]
    self.final_norm = LayerNorm()
    self.dropout = nn.Dropout(cfg.dropout)

  def __call__(self, items: jax.Array, deterministic: bool = True) -> jax.Array:
    """float32[B, L, D] hidden states; position t summarises items[:t + 1].

    Args:
      items: int32[B, L] item indices, right-aligned, ``PAD`` before.
      deterministic: no dropout (evaluation).
    """
    length = items.shape[1]
    if length > self.config.max_len:
      raise ValueError(
        f"history of {length} items exceeds max_len {self.config.max_len}"
      )
    valid = items != PAD
    x = jnp.take(self.item_embedding, items + 1, axis=0)
    # The original scales item embeddings by sqrt(D) before adding positions.
    x = x * jnp.sqrt(self.config.dim)
    # Right-aligned: the last position always has the last position vector,
    # whatever the history's length.
    x = x + self.position_embedding[-length:][None]
    x = self.dropout(x, deterministic=deterministic) * valid[..., None]
    for block in self.blocks:
      x = block(x, valid, deterministic)
    return self.final_norm(x) * valid[..., None]

  def item_vectors(self) -> jax.Array:
    """float32[I, D]: every catalogue item's (output) embedding."""
    return self.item_embedding[1:]

  def embed_items(self, items: jax.Array) -> jax.Array:
    """float32[..., D] output embeddings of int32[...] items (PAD -> 0)."""
    return jnp.take(self.item_embedding, items + 1, axis=0)

  def user_vectors(self, items: jax.Array) -> jax.Array:
    """float32[B, D]: the last position's state, the next-item query.

    Args:
      items: int32[B, L] right-aligned histories (``PAD`` before).
    """
    return self(items, deterministic=True)[:, -1]

  def score_all(self, items: jax.Array) -> jax.Array:
    """float32[B, I] next-item scores of every catalogue item.

    Args:
      items: int32[B, L] right-aligned histories (``PAD`` before).
    """
    return self.user_vectors(items) @ self.item_vectors().T


def bce_loss(
  model: SASRec,
  params,
  batch: dict[str, jax.Array],
  rng: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SASRec's binary cross-entropy with sampled negatives.

  Args:
    model: the module.
    params: its params.
    batch: ``inputs int32[B, L]``, ``positives int32[B, L]`` (the next item
      of each input position, ``PAD`` where there is none) and
      ``negatives int32[B, L, N]``.
    rng: dropout key.

  Returns:
    (scalar mean over positions with a positive of -log sigmoid(pos) -
    sum_n log(1 - sigmoid(neg_n)), {"accuracy": share of (positive,
    negative) pairs ordered right, "positions"}).
  """
  hidden = model.apply(
    {"params": params},
    batch["inputs"],
    deterministic=False,
    rngs={"dropout": dropout_key(rng)},
  )
  pos = model.apply(
    {"params": params}, batch["positives"], method=SASRec.embed_items
  )
  neg = model.apply(
    {"params": params}, batch["negatives"], method=SASRec.embed_items
  )
  pos_logit = jnp.einsum("bld,bld->bl", hidden, pos)
  neg_logit = jnp.einsum("bld,blnd->bln", hidden, neg)
  loss = jax.nn.softplus(-pos_logit) + jax.nn.softplus(neg_logit).sum(-1)
  weight = (batch["positives"] != PAD).astype(jnp.float32)
  count = jnp.maximum(weight.sum(), 1.0)
  ordered = (pos_logit[..., None] > neg_logit).mean(-1)
  return (loss * weight).sum() / count, {
    "accuracy": (ordered * weight).sum() / count,
    "positions": weight.sum(),
  }


def softmax_loss(
  model: SASRec,
  params,
  batch: dict[str, jax.Array],
  rng: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of each next item over the whole catalogue.

  Args:
    model: the module.
    params: its params.
    batch: ``inputs int32[B, L]`` and ``positives int32[B, L]`` (negatives
      are not used: every other item is one).
    rng: dropout key.

  Returns:
    (scalar mean over positions with a positive, {"accuracy": top-1 share,
    "positions"}).
  """
  hidden = model.apply(
    {"params": params},
    batch["inputs"],
    deterministic=False,
    rngs={"dropout": dropout_key(rng)},
  )
  items = model.apply({"params": params}, method=SASRec.item_vectors)
  logits = jnp.einsum("bld,id->bli", hidden, items)
  target = jnp.maximum(batch["positives"], 0)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logprobs, target[..., None], axis=-1)[..., 0]
  weight = (batch["positives"] != PAD).astype(jnp.float32)
  count = jnp.maximum(weight.sum(), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
  return (nll * weight).sum() / count, {
    "accuracy": (correct * weight).sum() / count,
    "positions": weight.sum(),
  }


def dropout_key(rng: jax.Array) -> jax.Array:
  """An "rbg" key drawn from ``rng``, for dropout masks.

  The default threefry generator dominates a CPU training step of this small
  model (it draws a bit per activation); rbg is several times cheaper and
  still a deterministic function of ``rng``.
  """
  return jax.random.wrap_key_data(
    jax.random.bits(rng, (4,), jnp.uint32), impl="rbg"
  )


LOSSES = {"bce": bce_loss, "softmax": softmax_loss}
