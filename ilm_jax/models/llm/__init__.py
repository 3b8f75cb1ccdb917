"""The frozen LLM: a Flax decoder for the Llama and Gemma families."""

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
