"""The Q-Former item encoder (BLIP-2's querying transformer over CF vectors).

K learned query vectors run through BERT layers. Every
``cross_attention_freq``-th layer (0, freq, 2*freq, ...) they cross-attend to
the entity's CF tokens: the entity's CF vector (an item or a user, plus a
learned type embedding) projected to ``num_cf_tokens`` tokens. Query positions
have their own feed-forward block (``ffn_query``); text positions use the
BERT one (``ffn``), so the text branch is exactly a pretrained BERT.

Three ways to run it, differing only in who may attend to whom:

* queries only (``encode_entities``): the item representation, float32[B, K, D];
* text only (``encode_text``): plain BERT;
* queries and text together (``__call__``): ``"bidirectional"`` for item-text
  matching, ``"causal"`` for item-grounded generation (text sees all queries
  and earlier text; queries never see text).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax.models import bert

TEXT_ATTENTION_MODES = ("bidirectional", "causal")


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  """Q-Former shape.

  Attributes:
    bert: the BERT the layers (and the text branch) follow.
    num_queries: K, learned query vectors per entity (1..32).
    num_cf_tokens: T, tokens the CF vector expands to for cross-attention.
    cf_dim: width d of the CF table.
    cross_attention_freq: queries cross-attend to CF tokens in layers
      0, freq, 2*freq, ...
    num_entity_types: entity types (item, user) for the type embedding.
  """

  bert: bert.BertConfig
  num_queries: int = 8
  num_cf_tokens: int = 4
  cf_dim: int = 64
  cross_attention_freq: int = 2
  num_entity_types: int = 2

  def __post_init__(self):
    if not 1 <= self.num_queries <= 32:
      raise ValueError(f"num_queries must be in 1..32, got {self.num_queries}")
    if self.num_cf_tokens < 1:
      raise ValueError(f"num_cf_tokens must be >= 1, got {self.num_cf_tokens}")
    if self.cross_attention_freq < 1:
      raise ValueError(
        f"cross_attention_freq must be >= 1, got {self.cross_attention_freq}"
      )

  @property
  def width(self) -> int:
    return self.bert.hidden_size

  def has_cross_attention(self, layer: int) -> bool:
    return layer % self.cross_attention_freq == 0


class QFormerLayer(nn.Module):
  """One BERT layer whose first ``num_queries`` positions are queries."""

  config: QFormerConfig
  cross_attention: bool

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array | None,
    num_queries: int,
    cf_tokens: jax.Array | None,
  ) -> jax.Array:
    """Runs the layer.

    Args:
      x: float32[B, K + L, D], queries first (K may be 0, L may be 0).
      mask: bool[B, K + L, K + L] self-attention mask, or None.
      num_queries: K.
      cf_tokens: float32[B, T, D], needed when K > 0.

    Returns:
      float32[B, K + L, D].
    """
    bcfg = self.config.bert
    x = bert.BertAttention(bcfg, name="attention")(x, mask)
    parts = []
    if num_queries:
      q = x[:, :num_queries]
      if self.cross_attention:
        q = bert.BertAttention(bcfg, name="cross_attention")(q, None, cf_tokens)
      parts.append(bert.BertFeedForward(bcfg, name="ffn_query")(q))
    if x.shape[1] > num_queries:
      parts.append(bert.BertFeedForward(bcfg, name="ffn")(x[:, num_queries:]))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def joint_mask(num_queries: int, text_mask: jax.Array, mode: str) -> jax.Array:
  """Self-attention mask over [queries; text].

  Args:
    num_queries: K.
    text_mask: int32[B, L], 1 for real tokens.
    mode: "bidirectional" (everyone sees everyone real) or "causal" (queries
      see queries; text sees all queries and text up to itself).

  Returns:
    bool[B, K + L, K + L], True where row may attend to column.
  """
  if mode not in TEXT_ATTENTION_MODES:
    raise ValueError(
      f"mode must be one of {TEXT_ATTENTION_MODES}, got {mode!r}"
    )
  b, length = text_mask.shape
  total = num_queries + length
  key_ok = jnp.concatenate(
    [jnp.ones((b, num_queries), bool), text_mask.astype(bool)], axis=1
  )
  mask = jnp.broadcast_to(key_ok[:, None, :], (b, total, total))
  if mode == "causal":
    row = jnp.arange(total)[:, None]
    col = jnp.arange(total)[None, :]
    is_query_row = row < num_queries
    is_query_col = col < num_queries
    allowed = jnp.where(is_query_row, is_query_col, is_query_col | (col <= row))
    mask = mask & allowed[None]
  return mask


class QFormer(nn.Module):
  """BLIP-2 Q-Former over CF embeddings.

  Parameters: ``embeddings`` and ``layer_{i}/{attention,ffn}`` are BERT's (and
  load from a BERT checkpoint); ``query_tokens``, ``cf_proj``,
  ``entity_type_embed``, ``cf_norm``, ``layer_{i}/cross_attention`` and
  ``layer_{i}/ffn_query`` are the Q-Former's own.
  """

  config: QFormerConfig

  def setup(self):
    cfg = self.config
    d = cfg.width
    self.embeddings = bert.BertEmbeddings(cfg.bert)
    self.layers = [
      QFormerLayer(cfg, cfg.has_cross_attention(i), name=f"layer_{i}")
      for i in range(cfg.bert.num_hidden_layers)
    ]
    self.query_tokens = self.param(
      "query_tokens",
      nn.with_logical_partitioning(
        nn.initializers.normal(bert.INIT_STD), ("queries", "embed")
      ),
      (cfg.num_queries, d),
    )
    self.cf_proj = nn.Dense(
      cfg.num_cf_tokens * d,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("cf_dim", "mlp")
      ),
      bias_init=nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("mlp",)
      ),
    )
    self.entity_type_embed = nn.Embed(
      cfg.num_entity_types,
      d,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(bert.INIT_STD), (None, "embed")
      ),
    )
    # Normalises CF tokens whatever the scale of the CF table (ALS vectors
    # are not unit-norm), like BLIP-2's LayerNorm on the vision features.
    self.cf_norm = nn.LayerNorm(
      epsilon=cfg.bert.layer_norm_eps,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )

  def cf_tokens(self, cf: jax.Array, types: jax.Array) -> jax.Array:
    """CF vectors float32[B, d] and int32[B] types -> float32[B, T, D]."""
    cfg = self.config
    if cf.shape[-1] != cfg.cf_dim:
      raise ValueError(
        f"CF vectors have width {cf.shape[-1]}, config.cf_dim is {cfg.cf_dim}"
      )
    tokens = self.cf_proj(cf).reshape(cf.shape[0], cfg.num_cf_tokens, -1)
    tokens = tokens + self.entity_type_embed(types)[:, None, :]
    return self.cf_norm(tokens)

  def _queries(self, batch: int) -> jax.Array:
    """The learned queries repeated per example: float32[B, K, D]."""
    return jnp.broadcast_to(
      self.query_tokens, (batch,) + self.query_tokens.shape
    )

  def _run(self, x, mask, num_queries, cf_tokens):
    for layer in self.layers:
      x = layer(x, mask, num_queries, cf_tokens)
    return x

  def encode_entities(self, cf: jax.Array, types: jax.Array) -> jax.Array:
    """Query outputs float32[B, K, D] for entities (CF float32[B, d])."""
    b = cf.shape[0]
    queries = jnp.broadcast_to(
      self.query_tokens, (b,) + self.query_tokens.shape
    )
    x = self.embeddings.normalize(queries)
    x = nn.with_logical_constraint(x, ("batch", "queries", "embed"))
    return self._run(
      x, None, self.config.num_queries, self.cf_tokens(cf, types)
    )

  def encode_text(self, token_ids: jax.Array, text_mask: jax.Array):
    """Plain BERT over text: float32[B, L, D]."""
    x = self.embeddings.normalize(self.embeddings(token_ids))
    return self._run(x, bert.padding_mask(text_mask), 0, None)

  def __call__(
    self,
    cf: jax.Array,
    types: jax.Array,
    token_ids: jax.Array,
    text_mask: jax.Array,
    mode: str = "bidirectional",
  ) -> tuple[jax.Array, jax.Array]:
    """Joint pass over [queries; text].

    Args:
      cf: float32[B, d] CF vectors.
      types: int32[B] entity types.
      token_ids: int32[B, L].
      text_mask: int32[B, L], 1 = real token.
      mode: "bidirectional" or "causal" (see ``joint_mask``).

    Returns:
      (query outputs float32[B, K, D], text outputs float32[B, L, D]).
    """
    k = self.config.num_queries
    b = cf.shape[0]
    queries = jnp.broadcast_to(
      self.query_tokens, (b,) + self.query_tokens.shape
    )
    # BLIP-2 normalises queries and text embeddings together.
    x = jnp.concatenate([queries, self.embeddings(token_ids)], axis=1)
    x = self.embeddings.normalize(x)
    mask = joint_mask(k, text_mask, mode)
    x = self._run(x, mask, k, self.cf_tokens(cf, types))
    return x[:, :k], x[:, k:]

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    """Tied-embedding logits float32[..., V] of hidden float32[..., D]."""
    return self.embeddings.attend(hidden)
