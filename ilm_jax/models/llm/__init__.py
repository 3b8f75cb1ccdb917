"""The frozen LLM: a Flax decoder for the Llama and Gemma families.

Typical use by the ILM (stage 2)::

  config, params, tokenizer = convert_llm.load_llm("smollm2")  # or restore_llm
  llm = Decoder(config)                       # dtype=jnp.bfloat16 also works
  words = llm.apply({"params": params}, ids, method=Decoder.embed)  # [B,T,D]
  embeddings = jnp.where(is_soft[..., None], soft_tokens, words)
  out = llm.apply({"params": params}, embeddings=embeddings,
                  input_mask=mask, logits_at=target_positions)
  out.logits   # float32[B, P, V] only where the loss needs them
  out.hidden   # float[B, T, D] final hidden states (retrieval head)

Generation after a prompt with soft tokens: ``decode.sampling.generate`` or
``decode.beam_search.beam_search`` with ``prompt_embeddings=embeddings``.
"""

from ilm_jax.models.llm.config import (
  GLOBAL,
  LOCAL,
  PRESETS,
  LlmConfig,
  RopeConfig,
  preset,
)
from ilm_jax.models.llm.decoder import Decoder, DecoderOutput, count_params
from ilm_jax.models.llm.kv_cache import KVCache, init_cache

__all__ = [
  "GLOBAL",
  "LOCAL",
  "PRESETS",
  "Decoder",
  "DecoderOutput",
  "KVCache",
  "LlmConfig",
  "RopeConfig",
  "count_params",
  "init_cache",
  "preset",
]
