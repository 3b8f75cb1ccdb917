"""Checkpoint conversion: HF safetensors and GGUF to the Flax LLM, tokenizers,
offline model packages and orbax checkpoints."""
