"""The Q-Former with its stage-1 heads (projections, ITM head, LM head).

Parameters are ``{"qformer": ..., "item_proj": ..., "text_proj": ...,
"itm_head": ..., "lm_transform": ..., "lm_bias": ..., "temperature": ...}``.
Stage 2 keeps only ``params["qformer"]``; the heads exist for stage 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax.models import bert
from ilm_jax.models.qformer import QFormer, QFormerConfig

# BLIP-2's starting temperature and clamp range for contrastive logits.
INIT_TEMPERATURE = 0.07
MIN_TEMPERATURE = 0.001
MAX_TEMPERATURE = 0.5
CONTRASTIVE_OBJECTIVES = ("itc", "ii", "ui")


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps * eps)


class Stage1Model(nn.Module):
  """Q-Former plus stage-1 heads.

  Attributes:
    config: Q-Former shape.
    embed_dim: E, width of the contrastive space (BLIP-2 uses 256).
  """

  config: QFormerConfig
  embed_dim: int = 256

  def setup(self):
    d = self.config.width
    self.qformer = QFormer(self.config)

    def dense(features, axes, name):
      return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.normal(bert.INIT_STD), axes
        ),
        bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (axes[1],)
        ),
        name=name,
      )

    self.item_proj = dense(self.embed_dim, ("embed", None), "item_proj")
    self.text_proj = dense(self.embed_dim, ("embed", None), "text_proj")
    self.itm_head = dense(2, ("embed", None), "itm_head")
    self.lm_transform = dense(d, ("embed", None), "lm_transform")
    self.lm_norm = nn.LayerNorm(
      epsilon=self.config.bert.layer_norm_eps,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )
    self.lm_bias = self.param(
      "lm_bias",
      nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
      (self.config.bert.vocab_size,),
    )
    # One learnable temperature per contrastive objective.
    self.temperature = self.param(
      "temperature",
      nn.with_logical_partitioning(
        nn.initializers.constant(INIT_TEMPERATURE), (None,)
      ),
      (len(CONTRASTIVE_OBJECTIVES),),
    )

  def temperatures(self) -> dict[str, jax.Array]:
    """Clamped temperatures, one scalar per contrastive objective."""
    t = jnp.clip(self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    return {name: t[i] for i, name in enumerate(CONTRASTIVE_OBJECTIVES)}

  def entity_features(self, cf: jax.Array, types: jax.Array) -> jax.Array:
    """Unit-norm contrastive features float32[B, K, E] of entities."""
    return l2_normalize(self.item_proj(self.qformer.encode_entities(cf, types)))

  def text_features(self, token_ids: jax.Array, text_mask: jax.Array):
    """Unit-norm contrastive features float32[B, E] of texts ([CLS] state)."""
    hidden = self.qformer.encode_text(token_ids, text_mask)
    return l2_normalize(self.text_proj(hidden[:, 0]))

  def itm_logits(self, cf, types, token_ids, text_mask) -> jax.Array:
    """Match / no-match logits float32[B, 2], averaged over the K queries."""
    queries, _ = self.qformer(cf, types, token_ids, text_mask, "bidirectional")
    return jnp.mean(self.itm_head(queries), axis=1)

  def itg_logits(self, cf, types, token_ids, text_mask) -> jax.Array:
    """Next-token logits float32[B, L, V] of text grounded on the entity."""
    _, text = self.qformer(cf, types, token_ids, text_mask, "causal")
    h = self.lm_norm(jax.nn.gelu(self.lm_transform(text), approximate=False))
    return self.qformer.lm_logits(h) + self.lm_bias

  def __call__(self, cf, types, token_ids, text_mask):
    """Touches every parameter (used by ``init``); returns all outputs."""
    return (
      self.entity_features(cf, types),
      self.text_features(token_ids, text_mask),
      self.itm_logits(cf, types, token_ids, text_mask),
      self.itg_logits(cf, types, token_ids, text_mask),
      self.temperatures(),
    )
