"""The frozen LLM of stage 2 and its tokenizer, by name.

``llm = "smollm2"`` (or any source ``ilm_jax.convert.convert_llm.load_llm``
accepts: a GGUF file, an HF directory, ``gemma3-270m``) loads real weights;
``llm = "tiny"`` builds a tiny random Llama-style decoder with a character
tokenizer, so tests and smoke runs exercise the whole stage in seconds
without any checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import linen as nn
from tokenizers import Regex, decoders, models, pre_tokenizers

from ilm_jax.convert.convert_llm import load_llm
from ilm_jax.convert.tokenizer import Tokenizer
from ilm_jax.models.llm.config import LlmConfig
from ilm_jax.models.llm.decoder import Decoder

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


def load_stage2_llm(source: str, seed: int = 0):
  """(LlmConfig, numpy params, Tokenizer) of the LLM a config names.

  Raises:
    ValueError: the source has no tokenizer.
  """
  if source == TINY:
    return tiny_llm(seed)
  config, params, tokenizer = load_llm(source, np.float32)
  if tokenizer is None:
    raise ValueError(f"stage2.llm {source!r}: no tokenizer found beside it")
  if tokenizer.pad_id is None:
    raise ValueError(f"stage2.llm {source!r}: tokenizer has no pad id")
  return config, params, tokenizer
