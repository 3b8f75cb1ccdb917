"""The frozen LLM of stage 2 and its tokenizer, by name.

``llm = "smollm2"`` (or any source ``ilm_jax.convert.convert_llm.load_llm``
accepts: a GGUF file, an HF directory, ``gemma3-270m``) loads real weights
on the host; a directory written by ``launch/convert_checkpoint.py``
(``llm_config.json``, ``params/``, ``tokenizer/``) is restored by orbax
straight into its shards on the mesh, so no host ever holds a full copy
(what a Llama-3-8B on a pod needs); ``llm = "tiny"`` builds a tiny random
Llama-style decoder with a character tokenizer, so tests and smoke runs
exercise the whole stage in seconds without any checkpoint.

``llm_dtype`` is the parameters' dtype: bfloat16 halves the frozen LLM's
memory (its matmuls still accumulate in float32); ``"auto"`` takes it on
TPU and GPU and keeps float32 on CPU, where bfloat16 is slower.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import tokenizers
from flax import linen as nn
from tokenizers import Regex, decoders, models, pre_tokenizers

from ilm_jax.convert import orbax_io
from ilm_jax.convert.convert_llm import load_llm
from ilm_jax.convert.tokenizer import Tokenizer, load_tokenizer_json
from ilm_jax.models.llm.config import LlmConfig
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.sharding.mesh import DEFAULT_RULES

TINY = "tiny"
# Character vocabulary of the tiny tokenizer: specials, newline, ASCII.
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_CHARS = ("\n",) + tuple(chr(c) for c in range(32, 127))
TINY_VOCAB = 128  # logit width; a few rows beyond the characters stay unused


def char_tokenizer() -> Tokenizer:
  """One token per character (printable ASCII), BOS prepended."""
  vocab = {s: i for i, s in enumerate(_SPECIALS + _CHARS)}
  backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
  backend.decoder = decoders.Fuse()
  backend.add_special_tokens(list(_SPECIALS))
  return Tokenizer(
    backend,
    bos_id=vocab["<bos>"],
    eos_ids=(vocab["<eos>"],),
    pad_id=vocab["<pad>"],
    add_bos=True,
  )


def tiny_config(embed_dim: int = 32, num_layers: int = 2) -> LlmConfig:
  """A Llama-style decoder small enough for unit tests."""
  tok = char_tokenizer()
  return LlmConfig(
    name="tiny-random",
    vocab_size=TINY_VOCAB,
    embed_dim=embed_dim,
    mlp_dim=2 * embed_dim,
    num_layers=num_layers,
    num_heads=4,
    num_kv_heads=2,
    head_dim=embed_dim // 4,
    tie_embeddings=True,
    bos_id=tok.bos_id,
    eos_ids=tok.eos_ids,
    pad_id=tok.pad_id,
    max_position=4096,
  )


def tiny_llm(seed: int = 0) -> tuple[LlmConfig, dict, Tokenizer]:
  """(config, random params, char tokenizer) of the tiny test LLM."""
  config = tiny_config()
  variables = jax.jit(Decoder(config).init)(
    jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)
  )
  params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
  return config, params, char_tokenizer()


def parameter_dtype(name: str):
  """The numpy dtype ``stage2.llm_dtype`` names ("auto": bfloat16 unless the
  default backend is the CPU)."""
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
  if name not in dtypes:
    raise ValueError(
      f"stage2.llm_dtype {name!r}: choose auto, float32 or bfloat16"
    )
  return np.dtype(dtypes[name])


def activation_dtype(name: str, llm_dtype):
  """The compute dtype ``stage2.llm_activations`` names: "auto" = the
  parameters' (``llm_dtype``, a ``stage2.llm_dtype`` name or a dtype)."""
  if name != "auto":
    return parameter_dtype(name)
  if isinstance(llm_dtype, str):
    return parameter_dtype(llm_dtype)
  return np.dtype(llm_dtype)


def is_converted(source: str) -> bool:
  """Whether ``source`` is a directory written by convert_checkpoint.py."""
  return (pathlib.Path(source) / orbax_io.CONFIG_FILE).is_file()


def load_stage2_llm(
  source: str,
  seed: int = 0,
  dtype: str = "float32",
  mesh: jax.sharding.Mesh | None = None,
  rules=DEFAULT_RULES,
):
  """(LlmConfig, params, Tokenizer) of the LLM a config names.

  Args:
    source: ``stage2.llm`` (see the module docstring).
    seed: the tiny LLM's init seed.
    dtype: ``stage2.llm_dtype``.
    mesh: where a converted checkpoint is restored, sharded by the
      parameters' logical axes under ``rules``; other sources come back as
      host numpy arrays (the training loop places them).
    rules: logical-to-mesh axis rules.

  Raises:
    ValueError: the source has no tokenizer or the tokenizer no pad id.
  """
  dtype = parameter_dtype(dtype)
  if source == TINY:
    config, params, tokenizer = tiny_llm(seed)
    return config, jax.tree.map(lambda x: x.astype(dtype), params), tokenizer
  if is_converted(source):
    config, params = orbax_io.restore_llm(source, mesh, rules, dtype)
    tokenizer_dir = pathlib.Path(source) / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
      raise ValueError(
        f"stage2.llm {source!r}: no tokenizer/tokenizer.json in the "
        "converted checkpoint; convert a source that has a tokenizer"
      )
    tokenizer = load_tokenizer_json(tokenizer_dir)
  else:
    config, params, tokenizer = load_llm(source, dtype)
  if tokenizer is None:
    raise ValueError(f"stage2.llm {source!r}: no tokenizer found beside it")
  if tokenizer.pad_id is None:
    raise ValueError(f"stage2.llm {source!r}: tokenizer has no pad id")
  return config, params, tokenizer
