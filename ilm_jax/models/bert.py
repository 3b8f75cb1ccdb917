"""A BERT encoder in Linen, laid out so HF BERT checkpoints load by name.

The same building blocks (embeddings, attention, feed-forward) make up both a
plain text encoder (``BertEncoder``, checked against ``transformers``) and the
Q-Former, whose text branch is initialised from a pretrained BERT. BERT is a
post-LayerNorm transformer: ``x = LayerNorm(x + sublayer(x))``.

Parameters carry logical axis names (``embed``, ``heads``, ``mlp``, ``vocab``)
so ``ilm_jax.sharding.mesh`` can shard them.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax import files

# BERT's truncated-normal-ish initialiser scale (HF ``initializer_range``).
INIT_STD = 0.02
# Added to attention scores of masked keys; large but finite so a fully
# masked row gives a uniform softmax rather than NaN.
MASK_VALUE = -1e9


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shape of a BERT encoder (field names follow HF ``config.json``).

  Attributes:
    vocab_size: word-piece vocabulary size.
    hidden_size: model width D.
    num_hidden_layers: number of transformer layers.
    num_attention_heads: attention heads; D must divide by it.
    intermediate_size: feed-forward width.
    max_position_embeddings: longest sequence the position table covers.
    type_vocab_size: number of token types (segment ids).
    layer_norm_eps: LayerNorm epsilon.
  """

  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size {self.hidden_size} is not divisible by "
        f"num_attention_heads {self.num_attention_heads}"
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> BertConfig:
    """Reads the BERT fields of an HF ``config.json``; errors name the file."""
    path = pathlib.Path(path)
    raw = files.read_json(path, "restore or reinstall that model's files")
    if raw.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} != 'gelu'")
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{path}: only absolute position embeddings supported")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names[:5] if n not in raw]
    if missing:
      raise ValueError(f"{path}: missing BERT config fields {missing}")
    return cls(**{n: raw[n] for n in names if n in raw})


def _dense(features: int, axes: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(
    features,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.normal(INIT_STD), axes
    ),
    bias_init=nn.with_logical_partitioning(
      nn.initializers.zeros_init(), (axes[1],)
    ),
    name=name,
  )


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=eps,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    name=name,
  )


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings (LayerNorm applied by caller).

  The LayerNorm is a separate submodule so the Q-Former can normalise its
  query tokens together with the text embeddings, as BLIP-2 does.
  """

  config: BertConfig

  def setup(self):
    cfg = self.config
    emb_init = nn.initializers.normal(INIT_STD)
    self.word_embeddings = nn.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      embedding_init=nn.with_logical_partitioning(emb_init, ("vocab", "embed")),
    )
    self.position_embeddings = nn.Embed(
      cfg.max_position_embeddings,
      cfg.hidden_size,
      embedding_init=nn.with_logical_partitioning(emb_init, (None, "embed")),
    )
    self.token_type_embeddings = nn.Embed(
      cfg.type_vocab_size,
      cfg.hidden_size,
      embedding_init=nn.with_logical_partitioning(emb_init, (None, "embed")),
    )
    self.layer_norm = _layer_norm(cfg.layer_norm_eps, "layer_norm")

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    """Un-normalised embeddings float32[B, L, D] of int32[B, L] ids."""
    length = token_ids.shape[1]
    if length > self.config.max_position_embeddings:
      raise ValueError(
        f"text length {length} exceeds max_position_embeddings "
        f"{self.config.max_position_embeddings}"
      )
    positions = jnp.arange(length)[None, :]
    # Every text is one segment (type 0), as in sentence encoders.
    return (
      self.word_embeddings(token_ids)
      + self.position_embeddings(positions)
      + self.token_type_embeddings(jnp.zeros_like(token_ids))
    )

  def normalize(self, x: jax.Array) -> jax.Array:
    return self.layer_norm(x)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits float32[..., V] against the word embeddings (tied LM head)."""
    return self.word_embeddings.attend(x)


class BertAttention(nn.Module):
  """Multi-head attention with BERT's post-LN residual block.

  Self-attention when ``kv`` is None; cross-attention otherwise (``kv`` may
  have a different width, e.g. the CF tokens).
  """

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array | None,
    kv: jax.Array | None = None,
  ) -> jax.Array:
    """Attends from x to kv (or to x).

    Args:
      x: float32[B, Lq, D].
      mask: bool[B, Lq, Lk] (or broadcastable), True where a query may
        attend to a key; None = all.
      kv: float32[B, Lk, Dk] keys/values source; None = x.

    Returns:
      float32[B, Lq, D].
    """
    cfg = self.config
    source = x if kv is None else kv
    d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    q = _dense(d, ("embed", "heads"), "query")(x)
    k = _dense(d, ("embed", "heads"), "key")(source)
    v = _dense(d, ("embed", "heads"), "value")(source)
    split = lambda t: t.reshape(t.shape[:2] + (h, hd))
    q, k, v = split(q), split(k), split(v)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd).astype(q.dtype)
    if mask is not None:
      scores = jnp.where(mask[:, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(
      x.shape[:2] + (d,)
    )
    out = _dense(d, ("heads", "embed"), "output")(context)
    return _layer_norm(cfg.layer_norm_eps, "layer_norm")(out + x)


class BertFeedForward(nn.Module):
  """GELU feed-forward with BERT's post-LN residual block."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """float32[B, L, D] -> float32[B, L, D]."""
    cfg = self.config
    h = _dense(cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x)
    # HF BERT's "gelu" is the exact erf form, not the tanh approximation.
    h = jax.nn.gelu(h, approximate=False)
    out = _dense(cfg.hidden_size, ("mlp", "embed"), "output")(h)
    return _layer_norm(cfg.layer_norm_eps, "layer_norm")(out + x)


class BertLayer(nn.Module):
  """Self-attention then feed-forward."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = BertAttention(self.config, name="attention")(x, mask)
    return BertFeedForward(self.config, name="ffn")(x)


def padding_mask(text_mask: jax.Array) -> jax.Array:
  """bool[B, L, L] self-attention mask from int/bool[B, L] (1 = real token)."""
  keys = text_mask.astype(bool)[:, None, :]
  return jnp.broadcast_to(keys, keys.shape[:1] + (text_mask.shape[1],) * 2)


class BertEncoder(nn.Module):
  """A BERT text encoder: embeddings, LayerNorm, ``num_hidden_layers`` layers.

  Parameter names (``embeddings``, ``layer_{i}``) match the Q-Former's, so one
  converter fills both.
  """

  config: BertConfig

  @nn.compact
  def __call__(self, token_ids: jax.Array, text_mask: jax.Array) -> jax.Array:
    """Encodes text.

    Args:
      token_ids: int32[B, L].
      text_mask: int32[B, L], 1 for real tokens, 0 for padding.

    Returns:
      Last hidden states float32[B, L, D].
    """
    embeddings = BertEmbeddings(self.config, name="embeddings")
    x = embeddings.normalize(embeddings(token_ids))
    mask = padding_mask(text_mask)
    for i in range(self.config.num_hidden_layers):
      x = BertLayer(self.config, name=f"layer_{i}")(x, mask)
    return x
