"""Reads GGUF checkpoints (llama.cpp's format) into the Decoder's params.

Tensors are dequantised to float32 with ``gguf.quants``, renamed to the HF
layout, undone of llama.cpp's conversion fix-ups, and then mapped by the HF
name map (``hf_params``):

* Llama-architecture files store Q and K rows permuted for llama.cpp's
  interleaved RoPE; we un-permute them to the "rotate half" layout.
* Gemma files store RMSNorm weights with Gemma's ``+1`` already added; we
  subtract it again, since our Gemma norms add it themselves.

A file's header is checked against its size before gguf reads it
(``weight_bounds.check_gguf``), and every error names the file.
"""

from __future__ import annotations

import pathlib
import re

import gguf
import numpy as np

from ilm_jax.convert.hf_params import params_from_hf
from ilm_jax.convert.weight_bounds import CorruptWeightsError, check_gguf
from ilm_jax.models.llm.config import GLOBAL, LOCAL, LlmConfig, RopeConfig

LLAMA_ARCHS = ("llama", "mistral", "qwen2")
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
# Architectures whose Q/K rows llama.cpp permutes (its "normal" RoPE type).
PERMUTED_QK_ARCHS = ("llama", "mistral")
# llama.cpp hard-codes these for Gemma 3 instead of storing them.
GEMMA3_LOCAL_ROPE_THETA = 10_000.0
GEMMA3_GLOBAL_EVERY = 6

_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q_norm.weight": "self_attn.q_norm.weight",
  "attn_k_norm.weight": "self_attn.k_norm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_NORMS = {"ffn_norm.weight": "post_attention_layernorm.weight"}
_GEMMA_SANDWICH_NORMS = {
  "post_attention_norm.weight": "post_attention_layernorm.weight",
  "ffn_norm.weight": "pre_feedforward_layernorm.weight",
  "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def open_gguf(path: str | pathlib.Path) -> gguf.GGUFReader:
  """A GGUF reader over a file whose header was checked against its size.

  Raises:
    FileNotFoundError: no such file.
    CorruptWeightsError: the file is truncated or corrupt (named).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {path} not found")
  check_gguf(path)
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf's errors name no file
    raise CorruptWeightsError(path, "GGUF", f"{type(e).__name__}: {e}") from e


def read_metadata(path, reader: gguf.GGUFReader, prefixes=None) -> dict:
  """``metadata`` of a reader, with decoding errors naming the file.

  Args:
    prefixes: keep only keys starting with one of these (None = all).
  """
  try:
    return {
      name: field.contents()
      for name, field in reader.fields.items()
      if prefixes is None or name.startswith(prefixes)
    }
  except Exception as e:
    raise CorruptWeightsError(path, "GGUF", f"{type(e).__name__}: {e}") from e


def metadata(reader: gguf.GGUFReader) -> dict:
  """Every scalar / string / array field of the file, decoded."""
  return {name: field.contents() for name, field in reader.fields.items()}


def config_from_gguf(meta: dict, name: str = "gguf") -> LlmConfig:
  """An LlmConfig from GGUF metadata.

  Raises:
    ValueError: for an architecture other than the Llama/Gemma families.
  """
  arch = meta.get("general.architecture")
  if arch not in LLAMA_ARCHS + GEMMA_ARCHS:
    raise ValueError(
      f"GGUF general.architecture {arch!r} is not one of "
      f"{LLAMA_ARCHS + GEMMA_ARCHS}"
    )

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise KeyError(f"GGUF metadata lacks {arch}.{key}")
    return value

  num_layers = int(get("block_count"))
  embed_dim = int(get("embedding_length"))
  num_heads = int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", embed_dim // num_heads))
  vocab = meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])
  gemma = arch in GEMMA_ARCHS
  rope = RopeConfig(theta=float(get("rope.freq_base", 10_000.0)))
  scaling = meta.get(f"{arch}.rope.scaling.type")
  if scaling == "linear":
    rope = RopeConfig(
      theta=rope.theta, kind="linear", factor=float(get("rope.scaling.factor"))
    )
  layer_types = (GLOBAL,) * num_layers
  local_rope = None
  window = meta.get(f"{arch}.attention.sliding_window")
  if arch == "gemma2":
    layer_types = tuple(
      LOCAL if i % 2 == 0 else GLOBAL for i in range(num_layers)
    )
  elif arch == "gemma3":
    layer_types = tuple(
      GLOBAL if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else LOCAL
      for i in range(num_layers)
    )
    local_rope = RopeConfig(theta=GEMMA3_LOCAL_ROPE_THETA)
  eos = int(meta.get("tokenizer.ggml.eos_token_id", 2))
  return LlmConfig(
    name=name,
    vocab_size=int(vocab),
    embed_dim=embed_dim,
    mlp_dim=int(get("feed_forward_length")),
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=int(get("attention.head_count_kv", num_heads)),
    head_dim=head_dim,
    activation="gelu_tanh" if gemma else "silu",
    norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
    norm_plus_one=gemma,
    qkv_bias=arch == "qwen2",
    qk_norm=arch == "gemma3",
    sandwich_norms=arch in ("gemma2", "gemma3"),
    scale_embeddings=gemma,
    tie_embeddings=True,  # set from the tensors by load_gguf
    query_scale=head_dim**-0.5,
    attn_softcap=meta.get(f"{arch}.attn_logit_softcapping"),
    final_softcap=meta.get(f"{arch}.final_logit_softcapping"),
    layer_types=layer_types,
    sliding_window=int(window) if LOCAL in layer_types else None,
    rope=rope,
    local_rope=local_rope,
    max_position=int(get("context_length", 8192)),
    bos_id=meta.get("tokenizer.ggml.bos_token_id"),
    eos_ids=(eos,),
    pad_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
  )


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's interleaving of the two RoPE halves of each head."""
  rows = weight.shape[0]
  return (
    weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
    .swapaxes(1, 2)
    .reshape(weight.shape)
  )


def hf_named_tensors(
  reader: gguf.GGUFReader, config: LlmConfig, arch: str
) -> dict[str, np.ndarray]:
  """Dequantised tensors of a GGUF file under their HF names."""
  block_names = dict(_BLOCK_NAMES)
  block_names.update(
    _GEMMA_SANDWICH_NORMS if config.sandwich_norms else _LLAMA_NORMS
  )
  tensors = {}
  for tensor in reader.tensors:
    shape = tuple(int(n) for n in reversed(tensor.shape))
    value = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    value = np.asarray(value, np.float32).reshape(shape)
    match = _BLOCK.fullmatch(tensor.name)
    if match:
      layer, short = match.groups()
      if short not in block_names:
        raise KeyError(f"GGUF tensor {tensor.name!r} has no HF counterpart")
      name = f"model.layers.{layer}.{block_names[short]}"
    elif tensor.name in _GLOBAL_NAMES:
      name = _GLOBAL_NAMES[tensor.name]
    else:
      raise KeyError(f"GGUF tensor {tensor.name!r} has no HF counterpart")
    if arch in PERMUTED_QK_ARCHS and short_is(tensor.name, "attn_q.weight"):
      value = _unpermute(value, config.num_heads)
    elif arch in PERMUTED_QK_ARCHS and short_is(tensor.name, "attn_k.weight"):
      value = _unpermute(value, config.num_kv_heads)
    if config.norm_plus_one and tensor.name.endswith("norm.weight"):
      value = value - 1.0
    tensors[name] = value
  return tensors


def short_is(name: str, suffix: str) -> bool:
  return name.startswith("blk.") and name.endswith("." + suffix)


def load_gguf(
  path: str | pathlib.Path, dtype=np.float32
) -> tuple[LlmConfig, dict, dict]:
  """(config, params, metadata) of a GGUF checkpoint.

  Args:
    path: the ``.gguf`` file.
    dtype: dtype of the returned (dequantised) parameters.
  """
  path = pathlib.Path(path)
  reader = open_gguf(path)
  meta = read_metadata(path, reader)
  try:
    config = config_from_gguf(meta, name=path.stem)
    tensors = hf_named_tensors(reader, config, meta["general.architecture"])
    config = config.replace(tie_embeddings="lm_head.weight" not in tensors)
    return config, params_from_hf(config, tensors, dtype), meta
  except Exception as e:  # metadata and tensors that do not fit together
    raise ValueError(
      f"{path}: no usable checkpoint ({type(e).__name__}: {e}); the file is "
      "truncated or corrupt, or not a supported Llama/Gemma model"
    ) from e
