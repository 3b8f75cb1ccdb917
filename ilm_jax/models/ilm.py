"""The Item-Language Model: soft entity tokens spliced into a frozen LLM.

Each entity (a CF-table row: user or item) of a batch is encoded once into S
soft tokens of the LLM's width; every prompt position whose ``slot_entity``
names an entity takes soft token ``slot_query`` of it instead of its word
embedding. Encoders (one per variant, same interface):

* ``"ilm"``: Q-Former query outputs float32[E, K, Dq] -> linear adapter ->
  float32[E, K, D]. From the stage-1 checkpoint, or random (ILM-rand).
* ``"mlp"``: CoLLM-style CF vector -> 2-layer MLP -> one soft token.
* ``"text"``: no entity tokens (identifiers are written as text); a
  trainable soft prompt of ``soft_prompt`` vectors instead.

The LLM's parameters are an input, never part of the trainable tree, so the
gradient is taken only with respect to the encoder and the LLM cannot move.

(About 400 lines: the encoder, the splice and the three ways the composed
model is used, loss, candidate scores and retrieval queries, share one
forward pass and stay together so that they cannot drift apart.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax.cf.table import ITEM_TYPE, USER_TYPE
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.models.qformer import QFormer, QFormerConfig
from ilm_jax.models.retrieval_head import (
  HEAD_KEY,
  RetrievalHead,
  in_batch_softmax_loss,
  item_vectors,
)
from ilm_jax.models.slots import SOFT_PROMPT
from ilm_jax.objectives.answer_loss import mean_answer_nll
from ilm_jax.objectives.trie_loss import answer_token_nll

VARIANTS = ("ilm", "mlp", "text")


def _dense(features: int, axes, name: str, out_rms: float = 1.0) -> nn.Dense:
  """Dense layer whose outputs start at RMS ~``out_rms`` for unit inputs."""
  return nn.Dense(
    features,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.variance_scaling(
        out_rms**2, "fan_in", "truncated_normal"
      ),
      axes,
    ),
    bias_init=nn.with_logical_partitioning(
      nn.initializers.zeros_init(), (axes[1],)
    ),
    name=name,
  )


class SoftTokenEncoder(nn.Module):
  """Entities -> soft tokens of the LLM's width, per variant.

  Attributes:
    variant: one of VARIANTS.
    llm_width: D, the LLM's embedding width.
    qformer_config: Q-Former shape ("ilm").
    mlp_hidden: hidden width of the MLP ("mlp").
    soft_prompt: P trainable prompt vectors before every prompt: the
      "text" variant's only parameters (at least 1 there); for "ilm" and
      "mlp" an optional shared prompt beside the entity tokens (0 = none,
      the paper's setting).
    token_rms: RMS of the LLM's input word embeddings. Soft tokens start at
      this scale (adapter / MLP output initialisation, soft-prompt init),
      so the frozen LLM first sees inputs of the size it was trained on
      rather than ones several times larger that swamp the prompt's words.
  """

  variant: str
  llm_width: int
  qformer_config: QFormerConfig | None = None
  mlp_hidden: int = 256
  soft_prompt: int = 0
  token_rms: float = 1.0

  @property
  def tokens_per_entity(self) -> int:
    if self.variant == "ilm":
      return self.qformer_config.num_queries
    return 1 if self.variant == "mlp" else 0

  @nn.compact
  def __call__(
    self, cf: jax.Array, types: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Soft tokens of E entities and the soft prompt.

    Args:
      cf: float32[E, d] CF vectors of the batch's distinct entities.
      types: int32[E] entity types (ITEM_TYPE / USER_TYPE).

    Returns:
      (float32[E, S, D] entity tokens (S = 0 for "text"), float32[P, D]
      soft prompt (P = 0 when there is none)).
    """
    d = self.llm_width
    if self.variant not in VARIANTS:
      raise ValueError(f"stage2.variant {self.variant!r} not in {VARIANTS}")
    prompt = jnp.zeros((0, d), jnp.float32)
    if self.variant == "text" or self.soft_prompt > 0:
      prompt = self.param(
        "soft_prompt",
        nn.with_logical_partitioning(
          nn.initializers.normal(self.token_rms), (None, "embed")
        ),
        (max(self.soft_prompt, 1), d),
      )
    if self.variant == "ilm":
      if self.qformer_config is None:
        raise ValueError("the 'ilm' variant needs a qformer_config")
      queries = QFormer(self.qformer_config, name="qformer").encode_entities(
        cf, types
      )
      # Q-Former outputs are layer-normed (unit RMS per entity token).
      soft = _dense(d, (None, "embed"), "adapter", self.token_rms)(queries)
      return soft, prompt
    if self.variant == "mlp":
      h = nn.gelu(_dense(self.mlp_hidden, ("cf_dim", "mlp"), "mlp_in")(cf))
      soft = _dense(d, ("mlp", "embed"), "mlp_out", self.token_rms)(h)
      return soft[:, None, :], prompt
    return jnp.zeros((cf.shape[0], 0, d), jnp.float32), prompt


def word_embedding_rms(decoder: Decoder, llm_params, sample: int = 4096):
  """RMS of the LLM's input word embeddings (``SoftTokenEncoder.token_rms``).

  Measured on ``sample`` evenly spaced token ids through ``Decoder.embed``,
  so an embedding scale (Gemma's sqrt(D)) is included.
  """
  vocab = decoder.config.vocab_size
  ids = jnp.linspace(0, vocab - 1, min(sample, vocab)).astype(jnp.int32)
  x = decoder.apply({"params": llm_params}, ids[None], method=Decoder.embed)
  return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))))


def _candidate_scores(logits: jax.Array, batch) -> jax.Array:
  """float32[B, N] candidate answer log-likelihoods from float32[B, N, M, V]
  logits at ``batch["cand_logits_at"]`` (-inf for padding candidates)."""
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(
    logprobs, batch["cand_tokens"][..., None], axis=-1
  )[..., 0]
  mask = batch["cand_mask"]
  scores = jnp.where(mask, token, 0.0).sum(axis=-1)
  return jnp.where(mask.any(axis=-1), scores, -jnp.inf)


def splice_soft_tokens(
  words: jax.Array,
  soft: jax.Array,
  prompt: jax.Array,
  slot_entity: jax.Array,
  slot_query: jax.Array,
) -> jax.Array:
  """Input embeddings with soft tokens at their slot positions.

  Args:
    words: float[B, L, D] word embeddings of the tokens.
    soft: float[E, S, D] soft tokens of the batch's entities.
    prompt: float[P, D] soft-prompt vectors.
    slot_entity: int32[B, L] local entity index, WORD (-1) or SOFT_PROMPT.
    slot_query: int32[B, L] which soft token (or prompt vector).

  Returns:
    float[B, L, D]: ``soft[e, q]`` where slot_entity = e >= 0,
    ``prompt[q]`` where it is SOFT_PROMPT, ``words`` elsewhere.
  """
  e, s, d = soft.shape
  table = jnp.concatenate(
    [soft.reshape(e * s, d), prompt, jnp.zeros((1, d), soft.dtype)]
  ).astype(words.dtype)
  blank = e * s + prompt.shape[0]  # the zero row, for word positions
  index = jnp.where(
    slot_entity >= 0,
    slot_entity * s + slot_query,
    jnp.where(slot_entity == SOFT_PROMPT, e * s + slot_query, blank),
  )
  picked = jnp.take(table, index, axis=0)
  return jnp.where((slot_entity == -1)[..., None], words, picked)


@dataclasses.dataclass(frozen=True)
class ItemLanguageModel:
  """A frozen decoder plus a trainable soft-token encoder.

  Attributes:
    decoder: the LLM (its params are passed in, frozen).
    encoder: the soft-token encoder (its params are what trains).
    num_users: U; CF rows below it are users (entity type USER_TYPE).
    retrieval_weight: weight of the retrieval head's in-batch softmax loss
      beside the generative loss; 0 = no head (``retrieval_head``).
    list_tokens: soft tokens of a history or candidate item: each entity's
      S tokens are mean-pooled into this many groups, appended after its S
      tokens (``EntityCoding.list_tokens``); 0 = lists use all S. Pooling
      after the linear adapter equals adapting pooled query outputs.
    answer_weighting: "token" or "example" (``objectives.answer_loss``).
  """

  decoder: Decoder
  encoder: SoftTokenEncoder
  num_users: int
  retrieval_weight: float = 0.0
  list_tokens: int = 0
  answer_weighting: str = "token"

  @property
  def head(self) -> RetrievalHead:
    return RetrievalHead(self.decoder.config.embed_dim)

  def init_encoder(self, rng: jax.Array, cf_dim: int):
    """Boxed (logically partitioned) trainable params.

    The encoder's tree, plus the retrieval head's under ``HEAD_KEY`` when
    ``retrieval_weight`` > 0.
    """
    cf = jnp.zeros((2, cf_dim), jnp.float32)
    types = jnp.zeros((2,), jnp.int32)
    enc_rng, head_rng = jax.random.split(rng)
    params = self.encoder.init(enc_rng, cf, types)["params"]
    if self.retrieval_weight > 0:
      width = self.decoder.config.embed_dim
      params = dict(params)
      params[HEAD_KEY] = self.head.init(
        head_rng, jnp.zeros((1, width), jnp.float32)
      )["params"]
    return params

  def entity_types(self, rows: jax.Array) -> jax.Array:
    return jnp.where(rows < self.num_users, USER_TYPE, ITEM_TYPE).astype(
      jnp.int32
    )

  def soft_tokens(self, encoder_params, cf_table: jax.Array, entities):
    """(float32[E, S, D], float32[P, D]) of CF rows int32[E]."""
    cf = jnp.take(cf_table, entities, axis=0)
    params = {k: v for k, v in encoder_params.items() if k != HEAD_KEY}
    return self.encoder.apply(
      {"params": params}, cf, self.entity_types(entities)
    )

  def _spliced(self, encoder_params, llm_params, cf_table, batch):
    soft, prompt = self.soft_tokens(encoder_params, cf_table, batch["entities"])
    words = self.decoder.apply(
      {"params": llm_params}, batch["tokens"], method=Decoder.embed
    )
    table = soft
    e, s, d = soft.shape
    if 0 < self.list_tokens < s:
      pooled = soft.reshape(e, self.list_tokens, s // self.list_tokens, d)
      table = jnp.concatenate([soft, pooled.mean(axis=2)], axis=1)
    x = splice_soft_tokens(
      words, table, prompt, batch["slot_entity"], batch["slot_query"]
    )
    return x, soft

  def _forward(self, encoder_params, llm_params, cf_table, batch, logits_at):
    """(DecoderOutput with logits at ``logits_at``, entity soft tokens)."""
    x, soft = self._spliced(encoder_params, llm_params, cf_table, batch)
    out = self.decoder.apply(
      {"params": llm_params},
      embeddings=x,
      input_mask=batch["input_mask"],
      positions=batch.get("positions"),
      segment_ids=batch.get("segment_ids"),
      logits_at=logits_at,
    )
    return out, soft

  def candidate_scores(
    self, encoder_params, llm_params, cf_table, batch
  ) -> jax.Array:
    """Log-likelihood of each candidate's answer, one forward pass.

    Args:
      encoder_params: trainable params.
      llm_params: the frozen LLM's params.
      cf_table: float32[rows, d].
      batch: a collated batch of packed re-ranking prompts (``collate``).

    Returns:
      float32[B, N] sum of log p(answer token) over each candidate's answer
      tokens given the prompt (teacher forced); -inf for padding candidates.
    """
    at = batch["cand_logits_at"]
    b, n, m = at.shape
    out, _ = self._forward(
      encoder_params, llm_params, cf_table, batch, at.reshape(b, n * m)
    )
    return _candidate_scores(out.logits.reshape(b, n, m, -1), batch)

  def prompt_embeddings(
    self, encoder_params, llm_params, cf_table, batch
  ) -> jax.Array:
    """float[B, L, D] input embeddings of a collated batch."""
    return self._spliced(encoder_params, llm_params, cf_table, batch)[0]

  def item_vectors(self, encoder_params, cf_table, rows) -> jax.Array:
    """float32[E, D] unit adapted embeddings of CF rows int32[E]."""
    soft, _ = self.soft_tokens(encoder_params, cf_table, rows)
    return item_vectors(soft)

  def retrieval_queries(
    self, encoder_params, llm_params, cf_table, batch
  ) -> jax.Array:
    """float32[B, D] unit retrieval queries of a collated prompt batch.

    The query reads the final hidden state at each row's last real prompt
    token (right padding), where the answer's first token is predicted.
    """
    x = self.prompt_embeddings(encoder_params, llm_params, cf_table, batch)
    mask = batch["input_mask"]
    out = self.decoder.apply(
      {"params": llm_params},
      embeddings=x,
      input_mask=mask,
      return_logits=False,
    )
    last = jnp.sum(mask, axis=1).astype(jnp.int32) - 1
    hidden = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)
    queries, _ = self.head.apply(
      {"params": encoder_params[HEAD_KEY]}, hidden[:, 0]
    )
    return queries

  def loss(self, encoder_params, frozen, batch, rng=None):
    """Mean next-token cross-entropy over the answer tokens.

    Args:
      encoder_params: trainable params.
      frozen: {"llm": decoder params, "cf": float32[rows, d] CF table}, and
        with ``stage2.trie_loss`` "trie" (``ItemTrie.loss_data``): identifier
        answers are then scored over the trie's allowed tokens
        (``objectives.trie_loss``).
      batch: a collated training batch (``data.stage2.collate.collate``).
      rng: unused (no dropout); kept for the loop's loss signature.

    Returns:
      (scalar loss, {"token_accuracy", "answer_tokens"}, "trie_answers"
      with a trie, plus with the retrieval head "generative_loss",
      "retrieval_loss", "retrieval_accuracy", "retrieval_rows").
    """
    del rng
    cand_at = batch["cand_logits_at"]
    b, n, m = cand_at.shape
    p = batch["target_positions"].shape[1]
    out, soft = self._forward(
      encoder_params,
      frozen["llm"],
      frozen["cf"],
      batch,
      jnp.concatenate(
        [batch["target_positions"], cand_at.reshape(b, n * m)], axis=1
      ),
    )
    trie = frozen.get("trie")
    nll, correct, on_trie = answer_token_nll(
      out.logits[:, :p], batch["target_tokens"], batch["target_mask"], trie
    )
    mask = batch["target_mask"].astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    metrics = {
      "token_accuracy": (correct * mask).sum() / count,
      "token_accuracy_weight": mask.sum(),
      "answer_tokens": mask.sum(),
    }
    if trie is not None:
      # Rows whose answer was scored over the trie's allowed tokens only.
      metrics["trie_answers"] = on_trie.sum().astype(jnp.float32)
    loss = mean_answer_nll(nll, mask, self.answer_weighting)
    # Re-ranking rows: softmax over the candidates' answer log-likelihoods,
    # the held-out item's candidate the class (rows without one add 0).
    scores = _candidate_scores(out.logits[:, p:].reshape(b, n, m, -1), batch)
    label = batch["cand_label"]
    labelled = (label >= 0).astype(jnp.float32)
    rows = jnp.maximum(labelled.sum(), 1.0)
    # Finite stand-ins for padding candidates: rows with none stay finite.
    finite = jnp.where(jnp.isfinite(scores), scores, -1e9)
    picked = jnp.take_along_axis(
      jax.nn.log_softmax(finite, axis=-1), jnp.maximum(label, 0)[:, None], 1
    )[:, 0]
    rerank_loss = -(picked * labelled).sum() / rows
    hit = (jnp.argmax(scores, axis=-1) == label).astype(jnp.float32)
    metrics["rerank_loss"] = rerank_loss
    metrics["rerank_accuracy"] = (hit * labelled).sum() / rows
    metrics["rerank_rows"] = labelled.sum()
    # Logged means weigh each batch by its rows (``loop.WEIGHT_SUFFIX``).
    for name in ("rerank_loss", "rerank_accuracy"):
      metrics[name + "_weight"] = labelled.sum()
    loss = loss + rerank_loss
    if self.retrieval_weight <= 0:
      return loss, metrics
    # Hidden state where the first answer token is predicted (the last
    # prompt token), as ``retrieval_queries`` reads it at evaluation.
    first = batch["target_positions"][:, :1]
    hidden = jnp.take_along_axis(out.hidden, first[..., None], axis=1)
    queries, temperature = self.head.apply(
      {"params": encoder_params[HEAD_KEY]}, hidden[:, 0]
    )
    r_loss, r_metrics = in_batch_softmax_loss(
      queries,
      item_vectors(soft),
      temperature,
      batch["target_entity"],
      batch["entity_is_candidate"],
    )
    metrics.update(r_metrics)
    metrics["generative_loss"] = loss
    metrics["retrieval_loss"] = r_loss
    return loss + self.retrieval_weight * r_loss, metrics
