"""Turns an HF ``config.json`` into an ``LlmConfig``.

``read_hf_config`` reads the file through transformers' ``AutoConfig``
(no torch needed), which fills each model type's defaults and normalises
older layouts (``rope_theta`` + ``rope_scaling``, ``rope_local_base_freq``,
``sliding_window_pattern``) into transformers 5's (``rope_parameters``,
possibly per layer type; ``layer_types``). ``config_from_hf`` maps that
normalised dict onto our own Flax decoder's ``LlmConfig``: the one
hand-written part, since no library describes our model.
"""

from __future__ import annotations

import pathlib

from ilm_jax.models.llm.config import GLOBAL, LOCAL, LlmConfig, RopeConfig

LLAMA_TYPES = ("llama", "mistral", "qwen2")
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")
SUPPORTED_TYPES = LLAMA_TYPES + GEMMA_TYPES

_DEFAULT_THETA = 10_000.0  # RoPE base when a dict names none
_HF_LAYER_TYPES = {"full_attention": GLOBAL, "sliding_attention": LOCAL}


def _rope_from_dict(params: dict | None, theta: float) -> RopeConfig:
  params = dict(params or {})
  kind = params.get("rope_type", params.get("type", "default"))
  theta = float(params.get("rope_theta", theta))
  if kind == "default":
    return RopeConfig(theta=theta)
  if kind == "linear":
    return RopeConfig(theta=theta, kind="linear", factor=params["factor"])
  if kind == "llama3":
    return RopeConfig(
      theta=theta,
      kind="llama3",
      factor=params["factor"],
      low_freq_factor=params["low_freq_factor"],
      high_freq_factor=params["high_freq_factor"],
      original_max_position=params["original_max_position_embeddings"],
    )
  raise ValueError(f"config.json: unsupported rope type {kind!r}")


def _ropes(hf: dict) -> tuple[RopeConfig, RopeConfig | None]:
  """(global RoPE, local RoPE or None) from ``rope_parameters``."""
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params:
    local = params.get("sliding_attention")
    return (
      _rope_from_dict(params["full_attention"], _DEFAULT_THETA),
      None if local is None else _rope_from_dict(local, _DEFAULT_THETA),
    )
  return _rope_from_dict(params, _DEFAULT_THETA), None


def _layer_types(hf: dict, num_layers: int) -> tuple:
  if hf.get("layer_types"):
    return tuple(_HF_LAYER_TYPES[t] for t in hf["layer_types"])
  # Mistral gives no layer types: a sliding window applies to every layer.
  if hf.get("model_type") == "mistral" and hf.get("sliding_window"):
    return (LOCAL,) * num_layers
  return (GLOBAL,) * num_layers


def _ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(value) if isinstance(value, list | tuple) else (int(value),)


def config_from_hf(hf: dict, name: str = "hf") -> LlmConfig:
  """An LlmConfig from an HF config dict in transformers 5's layout
  (``AutoConfig.to_dict()``; ``read_hf_config`` gives one).

  Raises:
    ValueError: for an unsupported ``model_type``.
  """
  if "text_config" in hf and hf.get("model_type") == "gemma3":
    hf = {**hf["text_config"], "model_type": "gemma3_text"}
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_TYPES:
    raise ValueError(
      f"config.json: model_type {model_type!r} is not one of {SUPPORTED_TYPES}"
    )
  gemma = model_type in GEMMA_TYPES
  num_layers = hf["num_hidden_layers"]
  num_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  layer_types = _layer_types(hf, num_layers)
  global_rope, local_rope = _ropes(hf)
  query_scale = None
  if model_type in ("gemma2", "gemma3_text"):
    query_scale = float(hf.get("query_pre_attn_scalar", head_dim)) ** -0.5
  activation = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  if activation in ("gelu_pytorch_tanh", "gelu"):
    activation = "gelu_tanh"
  eos = _ids(hf.get("eos_token_id"))
  return LlmConfig(
    name=name,
    vocab_size=hf["vocab_size"],
    embed_dim=hf["hidden_size"],
    mlp_dim=hf["intermediate_size"],
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=head_dim,
    activation=activation,
    norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    norm_plus_one=gemma,
    qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias")),
    qk_norm=model_type == "gemma3_text",
    sandwich_norms=model_type in ("gemma2", "gemma3_text"),
    scale_embeddings=gemma,
    tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
    query_scale=query_scale,
    attn_softcap=hf.get("attn_logit_softcapping"),
    final_softcap=hf.get("final_logit_softcapping"),
    layer_types=layer_types,
    sliding_window=hf.get("sliding_window") if LOCAL in layer_types else None,
    rope=global_rope,
    local_rope=local_rope,
    max_position=hf.get("max_position_embeddings", 8192),
    bos_id=hf.get("bos_token_id"),
    eos_ids=eos or (2,),
    pad_id=hf.get("pad_token_id") or 0,
  )


def read_hf_config(directory: str | pathlib.Path) -> LlmConfig:
  """The LlmConfig of an HF checkpoint directory's ``config.json``."""
  path = pathlib.Path(directory) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found (not an HF checkpoint dir)")
  # Imported here: only reading a user's HF folder needs transformers.
  import transformers

  try:
    hf = transformers.AutoConfig.from_pretrained(
      str(path.parent), local_files_only=True
    ).to_dict()
  except (ValueError, KeyError, OSError) as e:
    raise ValueError(f"{path}: not a config transformers can read: {e}") from e
  return config_from_hf(hf, name=path.parent.name)
