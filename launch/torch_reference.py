"""PyTorch references of our stage-2 hot paths, for side-by-side benchmarks.

What a PyTorch user would build from the libraries at hand, at our exact
weights, so that a benchmark can first check that both sides compute the
same numbers and then time them:

* ``llama_from_params``: transformers' ``LlamaForCausalLM`` holding our
  decoder's weights (``params_to_hf``).
* ``SoftTokens``: our "ilm" soft-token encoder with transformers' BLIP-2
  ``Blip2QFormerModel`` (post-LN BERT layers, cross-attention to the CF
  tokens every ``cross_attention_freq``-th layer, a feed-forward block of
  the queries' own), our CF projection, type embedding and norm around it,
  and the linear adapter into the LLM's width.
* ``Stage2Step``: the stage-2 training step: soft tokens spliced into the
  prompt's word embeddings, the frozen Llama (``requires_grad`` False), the
  answer tokens' cross-entropy plus the re-ranking rows' softmax over their
  candidates (``ItemLanguageModel.loss``), global-norm clipping and
  ``torch.optim.AdamW`` on the encoder only.
* ``naive_candidate_scores``: re-ranking the transformers way: one forward
  of prompt + candidate per candidate, summing the candidate tokens'
  log-probabilities.

Both sides take logits only where the loss or the score reads them (the
hidden states gathered there, then ``lm_head``), so they do the same FLOPs.
The benchmarks import this file from ``launch/``; it needs torch and
transformers, which the library itself does not.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from ilm_jax.cf.table import ITEM_TYPE, USER_TYPE
from ilm_jax.convert.hf_params import params_to_hf
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.slots import SOFT_PROMPT, WORD
from ilm_jax.train.optimizer import param_path

# Integer and boolean fields of a collated stage-2 batch (``collate``).
_INDEX_FIELDS = (
  "tokens",
  "positions",
  "segment_ids",
  "slot_entity",
  "slot_query",
  "entities",
  "cand_logits_at",
  "cand_tokens",
  "cand_label",
  "target_positions",
  "target_tokens",
)
_MASK_FIELDS = ("input_mask", "cand_mask", "target_mask")
# Stand-in for a padding candidate's -inf score inside the softmax, as ours.
_PADDING_SCORE = -1e9
# LlmConfig switches a plain Llama leaves off (None / False / default).
_NOT_LLAMA = (
  "activation",
  "norm_plus_one",
  "qkv_bias",
  "qk_norm",
  "sandwich_norms",
  "scale_embeddings",
  "attn_softcap",
  "final_softcap",
  "sliding_window",
  "local_rope",
)


def llama_from_params(config, params) -> transformers.LlamaForCausalLM:
  """transformers' Llama with our decoder's float32 weights, in eval mode.

  Args:
    config: our ``LlmConfig`` (Llama family).
    params: the Decoder's params (numpy or jax arrays).

  Raises:
    ValueError: ``config`` is not a plain Llama (Gemma's switches, biases,
      a RoPE other than the default).
  """
  other = [
    name
    for name in _NOT_LLAMA
    if getattr(config, name) not in (None, False, "silu", "default")
  ]
  if config.rope.kind != "default":
    other.append("rope.kind")
  if not math.isclose(config.attention_scale, config.head_dim**-0.5):
    other.append("query_scale")
  if other:
    raise ValueError(
      f"{config.name}: the PyTorch reference is a plain Llama; this LLM "
      f"sets {other}"
    )
  hf_config = transformers.LlamaConfig(
    vocab_size=config.vocab_size,
    hidden_size=config.embed_dim,
    intermediate_size=config.mlp_dim,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    num_key_value_heads=config.num_kv_heads,
    head_dim=config.head_dim,
    rms_norm_eps=config.norm_eps,
    tie_word_embeddings=config.tie_embeddings,
    rope_parameters=dict(rope_type="default", rope_theta=config.rope.theta),
    bos_token_id=config.bos_id,
    eos_token_id=config.eos_ids[0],
    pad_token_id=config.pad_id,
  )
  model = transformers.LlamaForCausalLM(hf_config).eval()
  hf = params_to_hf(config, jax.device_get(params))
  # Writable copies (jax's host arrays are read-only), freed once loaded.
  state = {k: torch.from_numpy(np.array(v)) for k, v in hf.items()}
  model.load_state_dict(state, strict=not config.tie_embeddings)
  return model


class SoftTokens(nn.Module):
  """``models.ilm.SoftTokenEncoder`` ("ilm" variant) in PyTorch.

  Args:
    qcfg: the Q-Former's shape.
    llm_width: D, the LLM's embedding width.
    soft_prompt: P shared soft-prompt vectors (0 = none).
  """

  def __init__(self, qcfg: QFormerConfig, llm_width: int, soft_prompt: int):
    super().__init__()
    b = qcfg.bert
    dq = qcfg.width
    self.qcfg = qcfg
    self.query_tokens = nn.Parameter(torch.zeros(qcfg.num_queries, dq))
    self.cf_proj = nn.Linear(qcfg.cf_dim, qcfg.num_cf_tokens * dq)
    self.entity_type_embed = nn.Embedding(qcfg.num_entity_types, dq)
    self.cf_norm = nn.LayerNorm(dq, eps=b.layer_norm_eps)
    self.qformer = transformers.Blip2QFormerModel(
      transformers.Blip2QFormerConfig(
        hidden_size=dq,
        num_hidden_layers=b.num_hidden_layers,
        num_attention_heads=b.num_attention_heads,
        intermediate_size=b.intermediate_size,
        hidden_act="gelu",  # the exact erf form, as ours
        hidden_dropout_prob=0.0,  # ours has no dropout in stage 2
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=b.layer_norm_eps,
        cross_attention_frequency=qcfg.cross_attention_freq,
        encoder_hidden_size=dq,  # CF tokens are projected to Dq
        use_qformer_text_input=False,  # queries only: no text FFN
      )
    )
    self.adapter = nn.Linear(dq, llm_width)
    prompt = torch.zeros(soft_prompt, llm_width)
    if soft_prompt:
      self.soft_prompt = nn.Parameter(prompt)
    else:  # P = 0 rows, as ours: nothing to train
      self.register_buffer("soft_prompt", prompt)

  def forward(self, cf: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """float32[E, K, D] soft tokens of CF vectors float32[E, d] of
    entities of int64[E] types."""
    e = cf.shape[0]
    tokens = self.cf_proj(cf).view(e, self.qcfg.num_cf_tokens, -1)
    tokens = self.cf_norm(tokens + self.entity_type_embed(types)[:, None])
    queries = self.query_tokens.expand(e, -1, -1)
    out = self.qformer(
      query_embeds=queries, encoder_hidden_states=tokens
    ).last_hidden_state
    return self.adapter(out)

  def torch_names(self) -> dict[str, str]:
    """Our encoder param path -> this module's parameter name."""
    names = {
      "qformer/query_tokens": "query_tokens",
      "qformer/cf_proj": "cf_proj",
      "qformer/entity_type_embed/embedding": "entity_type_embed.weight",
      "qformer/cf_norm": "cf_norm",
      "qformer/embeddings/layer_norm": "qformer.layernorm",
      "adapter": "adapter",
      "soft_prompt": "soft_prompt",
    }
    for i in range(self.qcfg.bert.num_hidden_layers):
      ours, theirs = f"qformer/layer_{i}", f"qformer.encoder.layer.{i}"
      blocks = [("attention", "attention")]
      if self.qcfg.has_cross_attention(i):
        blocks.append(("cross_attention", "crossattention"))
      for block, hf in blocks:
        for proj in ("query", "key", "value"):
          names[f"{ours}/{block}/{proj}"] = f"{theirs}.{hf}.attention.{proj}"
        names[f"{ours}/{block}/output"] = f"{theirs}.{hf}.output.dense"
        names[f"{ours}/{block}/layer_norm"] = f"{theirs}.{hf}.output.LayerNorm"
      names[f"{ours}/ffn_query/intermediate"] = (
        f"{theirs}.intermediate_query.dense"
      )
      names[f"{ours}/ffn_query/output"] = f"{theirs}.output_query.dense"
      names[f"{ours}/ffn_query/layer_norm"] = f"{theirs}.output_query.LayerNorm"
    return names


def _leaf_name(names: dict[str, str], path: str) -> str:
  """The PyTorch name of our param leaf ``path`` (e.g. ``adapter/kernel``)."""
  if path in names:
    return names[path]
  module, _, leaf = path.rpartition("/")
  if module not in names:
    raise KeyError(f"our encoder param {path!r} has no PyTorch counterpart")
  # Dense kernel / bias, LayerNorm scale / bias.
  return names[module] + {"kernel": ".weight", "scale": ".weight"}.get(
    leaf, "." + leaf
  )


def load_encoder_params(module: SoftTokens, params) -> dict[str, str]:
  """Copies our encoder params into ``module``, in place.

  Args:
    module: the PyTorch encoder.
    params: our unboxed encoder params (``model.init_encoder``).

  Returns:
    PyTorch parameter name -> our param path, for every parameter loaded.

  Raises:
    ValueError: a parameter of ``module`` got no value (a shape mismatch
      raises in ``copy_``).
  """
  names = module.torch_names()
  targets = dict(module.named_parameters())
  loaded = {}
  for key, value in jax.tree_util.tree_leaves_with_path(params):
    path = param_path(key)
    name = _leaf_name(names, path)
    value = np.array(value, np.float32)  # a writable copy
    if path.endswith("kernel"):  # ours: x @ kernel; nn.Linear: x @ weight.T
      value = np.ascontiguousarray(value.T)
    with torch.no_grad():
      targets[name].copy_(torch.from_numpy(value))
    loaded[name] = path
  missing = sorted(set(targets) - set(loaded))
  if missing:
    raise ValueError(f"PyTorch encoder params without a value: {missing}")
  return loaded


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """A collated numpy batch as tensors (int64 indices, bool masks)."""
  out = {}
  for name, value in batch.items():
    if name in _MASK_FIELDS:
      out[name] = torch.from_numpy(np.asarray(value, bool))
    elif name in _INDEX_FIELDS:
      out[name] = torch.from_numpy(np.asarray(value, np.int64))
  return out


def attention_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
  """What transformers' Llama takes as ``attention_mask``.

  int64[B, L] padding mask (transformers adds causality) when no row packs
  candidates; otherwise bool[B, 1, L, L] (used as given): causal, real
  keys only, and a candidate segment sees the prompt (segment 0) and
  itself, never another candidate (``kv_cache.context_without_cache``).
  """
  valid = batch["input_mask"]
  segments = batch["segment_ids"]
  if not bool(segments.any()):
    return valid.long()
  length = valid.shape[1]
  causal = torch.ones(length, length, dtype=torch.bool).tril()
  keys = segments[:, None, :]
  same = (keys == 0) | (keys == segments[:, :, None])
  return (causal[None] & valid[:, None, :] & same)[:, None]


def logits_at(
  llm: transformers.LlamaForCausalLM,
  embeddings: torch.Tensor,
  mask: torch.Tensor,
  positions: torch.Tensor,
  at: torch.Tensor,
) -> torch.Tensor:
  """float32[B, P, V] logits at token indices int64[B, P] of a forward
  over input embeddings float32[B, L, D] (``mask``: ``attention_mask``,
  ``positions``: int64[B, L] RoPE positions)."""
  hidden = llm.model(
    inputs_embeds=embeddings,
    attention_mask=mask,
    position_ids=positions,
    use_cache=False,
  ).last_hidden_state
  picked = torch.gather(
    hidden, 1, at[..., None].expand(-1, -1, hidden.shape[-1])
  )
  return llm.lm_head(picked)


def candidate_scores(
  logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
  """float32[B, N] answer log-likelihoods from float32[B, N, M, V] logits,
  int64[B, N, M] answer tokens and bool[B, N, M] mask; -inf for padding
  candidates (``models.ilm._candidate_scores``)."""
  logp = F.log_softmax(logits.float(), dim=-1)
  token = torch.gather(logp, -1, tokens[..., None])[..., 0]
  scores = torch.where(mask, token, 0.0).sum(-1)
  return torch.where(mask.any(-1), scores, -torch.inf)


def _answer_nll(nll, mask, weighting: str) -> torch.Tensor:
  """``objectives.answer_loss.mean_answer_nll``."""
  if weighting == "token":
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)
  tokens = mask.sum(-1)
  per_row = (nll * mask).sum(-1) / tokens.clamp(min=1.0)
  rows = (tokens > 0).float()
  return (per_row * rows).sum() / rows.sum().clamp(min=1.0)


class Stage2Step:
  """The stage-2 training step in PyTorch (``ItemLanguageModel.loss`` and
  the shared loop's AdamW step).

  Args:
    llm: the frozen Llama (``llama_from_params``); frozen here.
    encoder: the soft-token encoder, loaded by ``load_encoder_params``.
    our_paths: its parameter names -> our param paths (what
      ``load_encoder_params`` returns), to apply ``no_decay_regex``.
    num_users: U; CF rows below it are users.
    cf_table: float32[rows, d], frozen.
    list_tokens: pooled soft tokens per listed entity (0 = none).
    answer_weighting: "token" or "example".
    train: the loop config (``stage2.train``): AdamW betas, weight decay,
      ``no_decay_regex``, clipping; the learning rate is set per step.
  """

  def __init__(
    self,
    llm,
    encoder: SoftTokens,
    our_paths: dict[str, str],
    num_users: int,
    cf_table: np.ndarray,
    list_tokens: int,
    answer_weighting: str,
    train,
  ):
    self.llm = llm.eval().requires_grad_(False)
    self.encoder = encoder.train()
    self.num_users = num_users
    self.cf = torch.from_numpy(np.asarray(cf_table, np.float32))
    self.list_tokens = list_tokens
    self.answer_weighting = answer_weighting
    self.clip = float(train.grad_clip_norm)
    no_decay = re.compile(str(train.no_decay_regex))
    groups = {True: [], False: []}
    for name, param in encoder.named_parameters():
      groups[not no_decay.search(our_paths[name])].append(param)
    decay = {True: float(train.weight_decay), False: 0.0}
    self.optimizer = torch.optim.AdamW(
      [
        {"params": params, "weight_decay": decay[key]}
        for key, params in groups.items()
        if params
      ],
      lr=float(train.learning_rate),
      betas=(float(train.adam_b1), float(train.adam_b2)),
      eps=1e-8,  # optax's default
    )

  def reset(self, params) -> None:
    """Back to our encoder params ``params``, with fresh AdamW moments."""
    load_encoder_params(self.encoder, params)
    self.optimizer.state.clear()

  def embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32[B, L, D] prompt embeddings with soft tokens spliced in
    (``ItemLanguageModel._spliced``)."""
    rows = batch["entities"]
    types = torch.where(rows < self.num_users, USER_TYPE, ITEM_TYPE)
    soft = self.encoder(self.cf[rows], types)
    e, s, d = soft.shape
    if 0 < self.list_tokens < s:
      pooled = soft.view(e, self.list_tokens, s // self.list_tokens, d)
      soft = torch.cat([soft, pooled.mean(2)], 1)
      s = soft.shape[1]
    prompt = self.encoder.soft_prompt
    table = torch.cat([soft.reshape(e * s, d), prompt, soft.new_zeros(1, d)])
    entity, query = batch["slot_entity"], batch["slot_query"]
    index = torch.where(
      entity >= 0,
      entity * s + query,
      torch.where(
        entity == SOFT_PROMPT, e * s + query, e * s + prompt.shape[0]
      ),
    )
    words = self.llm.model.embed_tokens(batch["tokens"])
    return torch.where((entity == WORD)[..., None], words, table[index])

  def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar loss of a batch (``to_torch`` of a collated batch)."""
    cand_at = batch["cand_logits_at"]
    b, n, m = cand_at.shape
    p = batch["target_positions"].shape[1]
    at = torch.cat([batch["target_positions"], cand_at.view(b, n * m)], 1)
    logits = logits_at(
      self.llm,
      self.embeddings(batch),
      attention_mask(batch),
      batch["positions"],
      at,
    )
    logp = F.log_softmax(logits[:, :p], dim=-1)
    nll = -torch.gather(logp, -1, batch["target_tokens"][..., None])[..., 0]
    loss = _answer_nll(nll, batch["target_mask"].float(), self.answer_weighting)
    scores = candidate_scores(
      logits[:, p:].view(b, n, m, -1), batch["cand_tokens"], batch["cand_mask"]
    )
    label = batch["cand_label"]
    labelled = (label >= 0).float()
    finite = torch.where(torch.isfinite(scores), scores, _PADDING_SCORE)
    picked = torch.gather(
      F.log_softmax(finite, -1), 1, label.clamp(min=0)[:, None]
    )[:, 0]
    return loss - (picked * labelled).sum() / labelled.sum().clamp(min=1.0)

  def step(self, batch: dict[str, torch.Tensor], learning_rate: float):
    """One AdamW update; returns the loss before it (a float)."""
    for group in self.optimizer.param_groups:
      group["lr"] = learning_rate
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss(batch)
    loss.backward()
    if self.clip > 0:
      nn.utils.clip_grad_norm_(self.encoder.parameters(), self.clip)
    self.optimizer.step()
    return loss.item()


def naive_shape(prompts, answers) -> tuple[int, int]:
  """(padded length, answer positions) of each of the N forwards of
  ``naive_candidate_scores`` (same arguments): the longest prompt + answer
  but its last token, the longest answer."""
  width = max(
    len(p) + len(a) - 1 for p, row in zip(prompts, answers) for a in row
  )
  return width, max(len(a) for row in answers for a in row)


def naive_candidate_scores(
  llm, prompts: list[torch.Tensor], answers: list[list[np.ndarray]]
) -> torch.Tensor:
  """Re-ranking scores the naive way: a forward per candidate.

  For candidate c, every row's prompt is followed by its c-th answer but
  the last token (right padding), and the log-probabilities of the answer
  tokens are summed, read at the positions predicting them.

  Args:
    llm: the Llama.
    prompts: per row, float32[Lp, D] prompt input embeddings.
    answers: per row, per candidate, int[M] answer tokens (same number of
      candidates in every row).

  Returns:
    float32[B, N].
  """
  embed = llm.model.embed_tokens
  b, n = len(prompts), len(answers[0])
  width, longest = naive_shape(prompts, answers)
  out = torch.empty(b, n)
  for c in range(n):
    x = prompts[0].new_zeros(b, width, prompts[0].shape[-1])
    mask = torch.zeros(b, width, dtype=torch.long)
    at = torch.zeros(b, longest, dtype=torch.long)
    tokens = torch.zeros(b, longest, dtype=torch.long)
    valid = torch.zeros(b, longest, dtype=torch.bool)
    for r in range(b):
      answer = torch.as_tensor(answers[r][c], dtype=torch.long)
      lp, m = len(prompts[r]), len(answer)
      x[r, :lp] = prompts[r]
      x[r, lp : lp + m - 1] = embed(answer[:-1])
      mask[r, : lp + m - 1] = 1
      at[r, :m] = lp - 1 + torch.arange(m)
      tokens[r, :m], valid[r, :m] = answer, True
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = logits_at(llm, x, mask, positions, at)
    out[:, c] = candidate_scores(
      logits[:, None], tokens[:, None], valid[:, None]
    )[:, 0]
  return out
