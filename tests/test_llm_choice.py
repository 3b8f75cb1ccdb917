"""The frozen LLM of the user's choice: a Llama folder converted to orbax,
restored straight into its shards in bfloat16, trains stage 2."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from tokenizers import processors

from ilm_jax.convert import frozen_llm
from ilm_jax.convert.convert_llm import convert_llm
from ilm_jax.data import prompts as P
from ilm_jax.pipeline import stage2
from tests.tiny import (
  spy_on_training_inputs,
  stage2_config,
  write_random_cf_table,
)


def _llama_dir(directory):
  """A tiny random Llama checkpoint whose tokenizer (one token per
  character) adds BOS only through its post-processor, as Llama 3's does:
  tokenizer_config.json names BOS but has no ``add_bos_token``."""
  transformers = pytest.importorskip("transformers")
  chars = frozen_llm.char_tokenizer()
  config = transformers.LlamaConfig(
    vocab_size=frozen_llm.TINY_VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    tie_word_embeddings=False,
  )
  transformers.LlamaForCausalLM(config).save_pretrained(directory)
  backend = chars.backend
  backend.post_processor = processors.TemplateProcessing(
    single="<bos> $A",
    special_tokens=[("<bos>", chars.bos_id)],
  )
  backend.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
    json.dumps(
      {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    )
  )
  return directory, chars.bos_id


def test_converted_llama_trains_stage2_in_bfloat16(tmp_path, monkeypatch):
  hf_dir, bos = _llama_dir(tmp_path / "llama")
  converted = tmp_path / "llama_orbax"
  convert_llm(str(hf_dir), converted)
  assert frozen_llm.is_converted(str(converted))

  config = stage2_config(
    llm=str(converted),
    llm_dtype="bfloat16",
    tasks=(P.SEQUENTIAL, P.DESCRIPTION, P.RERANK),
    evaluations=("rerank:rerank:valid:unseen",),
  )
  config.stage2.train.num_steps = 2
  config.stage2.train.checkpoint_every = 2
  write_random_cf_table(config, tmp_path)
  # What the training loop is handed: the frozen LLM and every batch.
  seen = spy_on_training_inputs(monkeypatch)
  results = stage2.run(config, tmp_path)

  assert results["train"]["loss"] > 0 and np.isfinite(results["train"]["loss"])
  # Two steps of eight prompts, every one opening with the Llama BOS.
  assert len(seen["first_tokens"]) == 16
  assert set(seen["first_tokens"]) == {bos}
  # The LLM reached the loop restored by orbax onto the mesh, in bfloat16,
  # sharded by its logical axes (not a host copy).
  leaves = jax.tree.leaves(seen["frozen"]["llm"])
  assert all(isinstance(x, jax.Array) for x in leaves)
  assert {x.dtype for x in leaves} == {np.dtype(ml_dtypes.bfloat16)}
  assert all(len(x.sharding.device_set) == 8 for x in leaves)
  rr = results["evaluations"]["rerank:rerank:valid:unseen"]["metrics"]
  assert rr["ilm"]["users"] > 0


def test_llm_dtype_auto_is_float32_on_cpu():
  assert frozen_llm.parameter_dtype("auto") == np.float32
  assert frozen_llm.parameter_dtype("bfloat16") == ml_dtypes.bfloat16
  with pytest.raises(ValueError, match="llm_dtype"):
    frozen_llm.parameter_dtype("float16")
