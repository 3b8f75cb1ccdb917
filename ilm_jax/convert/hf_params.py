"""Maps HF-named tensors onto the Decoder's parameter tree, and back.

An explicit name map plus small fix-ups (transpose a torch ``Linear`` weight,
split its output features into heads). The GGUF loader renames its tensors
into this HF layout first, so both formats share this one map.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np

from ilm_jax.convert.hf_config import read_hf_config
from ilm_jax.convert.safetensors_reader import read_tensors
from ilm_jax.models.llm.config import LlmConfig

_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")


def _prefix(tensors: Mapping[str, np.ndarray]) -> str:
  for prefix in _PREFIXES:
    if prefix + "embed_tokens.weight" in tensors:
      return prefix
  raise KeyError(
    "checkpoint has no '*embed_tokens.weight' tensor; found e.g. "
    f"{sorted(tensors)[:5]}"
  )


def _layer_names(config: LlmConfig) -> dict[str, str]:
  """Our block norms -> HF names (Llama calls its pre-MLP norm 'post')."""
  if config.sandwich_norms:
    return {
      "pre_attn_norm": "input_layernorm",
      "post_attn_norm": "post_attention_layernorm",
      "pre_mlp_norm": "pre_feedforward_layernorm",
      "post_mlp_norm": "post_feedforward_layernorm",
    }
  return {
    "pre_attn_norm": "input_layernorm",
    "pre_mlp_norm": "post_attention_layernorm",
  }


def params_from_hf(
  config: LlmConfig, tensors: Mapping[str, np.ndarray], dtype=np.float32
) -> dict:
  """The Decoder's params from HF-named tensors.

  Args:
    config: the architecture (checks every shape against it).
    tensors: HF name -> array (torch ``Linear`` weights are [out, in]).
    dtype: dtype of the returned arrays.

  Returns:
    A nested dict of numpy arrays, the ``params`` collection of ``Decoder``.

  Raises:
    KeyError / ValueError naming the tensor that is missing or misshapen.
  """
  prefix = _prefix(tensors)
  d, h, k, hd = (
    config.embed_dim,
    config.num_heads,
    config.num_kv_heads,
    config.head_dim,
  )

  def get(name, shape):
    full = prefix + name if not name.startswith("lm_head") else name
    if full not in tensors:
      raise KeyError(f"checkpoint lacks tensor {full!r}")
    value = np.asarray(tensors[full])
    if tuple(value.shape) != tuple(shape):
      raise ValueError(
        f"tensor {full!r} has shape {value.shape}, config expects {shape}"
      )
    return value.astype(np.float32, copy=False)  # cast() copies once

  def cast(value):
    return np.ascontiguousarray(value).astype(dtype)

  params = {
    "embedding": cast(get("embed_tokens.weight", (config.vocab_size, d))),
    "final_norm": {"scale": cast(get("norm.weight", (d,)))},
  }
  if not config.tie_embeddings:
    params["lm_head"] = cast(get("lm_head.weight", (config.vocab_size, d)).T)
  for i in range(config.num_layers):
    base = f"layers.{i}."
    attn = base + "self_attn."
    layer = {
      ours: {"scale": cast(get(base + theirs + ".weight", (d,)))}
      for ours, theirs in _layer_names(config).items()
    }
    att = {
      "q_kernel": cast(get(attn + "q_proj.weight", (h * hd, d)).T).reshape(
        d, h, hd
      ),
      "k_kernel": cast(get(attn + "k_proj.weight", (k * hd, d)).T).reshape(
        d, k, hd
      ),
      "v_kernel": cast(get(attn + "v_proj.weight", (k * hd, d)).T).reshape(
        d, k, hd
      ),
      "o_kernel": cast(get(attn + "o_proj.weight", (d, h * hd)).T).reshape(
        h, hd, d
      ),
    }
    if config.qkv_bias:
      for name, heads in (("q", h), ("k", k), ("v", k)):
        bias = get(attn + f"{name}_proj.bias", (heads * hd,))
        att[f"{name}_bias"] = cast(bias.reshape(heads, hd))
    if config.qk_norm:
      att["q_norm"] = {"scale": cast(get(attn + "q_norm.weight", (hd,)))}
      att["k_norm"] = {"scale": cast(get(attn + "k_norm.weight", (hd,)))}
    layer["attn"] = att
    mlp = base + "mlp."
    f = config.mlp_dim
    layer["mlp"] = {
      "gate_kernel": cast(get(mlp + "gate_proj.weight", (f, d)).T),
      "up_kernel": cast(get(mlp + "up_proj.weight", (f, d)).T),
      "down_kernel": cast(get(mlp + "down_proj.weight", (d, f)).T),
    }
    params[f"layers_{i}"] = layer
  return params


def load_hf_checkpoint(
  directory: str | pathlib.Path, dtype=np.float32
) -> tuple[LlmConfig, dict]:
  """(config, params) of an HF checkpoint directory, read without torch.

  Args:
    directory: holds ``config.json`` and ``model.safetensors`` (or shards
      with ``model.safetensors.index.json``).
    dtype: dtype of the returned parameters.
  """
  config = read_hf_config(directory)
  return config, params_from_hf(config, read_tensors(directory), dtype)


def params_to_hf(config: LlmConfig, params) -> dict[str, np.ndarray]:
  """The inverse map: HF-named float32 tensors from the Decoder's params.

  Lets a reference implementation (or an HF export) run the exact weights
  that were loaded from another format such as GGUF.
  """
  d = config.embed_dim

  def arr(x):
    return np.asarray(x, np.float32)

  out = {
    "model.embed_tokens.weight": arr(params["embedding"]),
    "model.norm.weight": arr(params["final_norm"]["scale"]),
  }
  if not config.tie_embeddings:
    out["lm_head.weight"] = arr(params["lm_head"]).T
  for i in range(config.num_layers):
    layer = params[f"layers_{i}"]
    base = f"model.layers.{i}."
    for ours, theirs in _layer_names(config).items():
      out[base + theirs + ".weight"] = arr(layer[ours]["scale"])
    att = layer["attn"]
    for name in ("q", "k", "v"):
      kernel = arr(att[f"{name}_kernel"])
      out[base + f"self_attn.{name}_proj.weight"] = kernel.reshape(d, -1).T
      if config.qkv_bias:
        out[base + f"self_attn.{name}_proj.bias"] = arr(
          att[f"{name}_bias"]
        ).reshape(-1)
    o_kernel = arr(att["o_kernel"]).reshape(-1, d)
    out[base + "self_attn.o_proj.weight"] = o_kernel.T
    if config.qk_norm:
      out[base + "self_attn.q_norm.weight"] = arr(att["q_norm"]["scale"])
      out[base + "self_attn.k_norm.weight"] = arr(att["k_norm"]["scale"])
    for name in ("gate", "up", "down"):
      out[base + f"mlp.{name}_proj.weight"] = arr(
        layer["mlp"][f"{name}_kernel"]
      ).T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
