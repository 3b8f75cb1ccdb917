"""Truncated, hostile and corrupted weight files fail at once, named."""

import os
import re
import struct

import gguf
import pytest

from ilm_jax import files
from ilm_jax.convert import model_packages
from ilm_jax.convert.gguf_checkpoint import load_gguf
from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.safetensors_reader import read_tensors
from ilm_jax.convert.weight_bounds import CorruptWeightsError
from ilm_jax.drills import weights


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("gguf") / "valid.gguf"
  weights.write_gguf(path)
  return path, path.read_bytes(), weights._gguf_layout(path)


@pytest.fixture
def no_gguf_reader(monkeypatch):
  """Fails the test if gguf's reader (which trusts the header) is reached."""

  def refuse(*args, **kwargs):
    raise AssertionError("GGUFReader reached: the header was not checked")

  monkeypatch.setattr(gguf, "GGUFReader", refuse)


def _corrupt(path, loader):
  with pytest.raises(CorruptWeightsError) as info:
    loader(path)
  message = str(info.value)
  assert message.startswith(f"{path}: truncated or corrupt "), message
  return message


def test_intact_gguf_loads(gguf_file):
  path, _, _ = gguf_file
  config, params, _ = load_gguf(path)
  assert config.embed_dim == weights._DIM
  assert params["embedding"].shape == (weights._VOCAB, weights._DIM)
  assert load_gguf_tokenizer(path).eos_ids


def test_truncated_gguf_names_the_file(gguf_file, tmp_path, no_gguf_reader):
  _, data, layout = gguf_file
  for cut in (0, 20, 100, layout["array_count"] + 3, layout["data_start"] + 9):
    path = tmp_path / f"cut{cut}.gguf"
    path.write_bytes(data[:cut])
    _corrupt(path, load_gguf)
    _corrupt(path, load_gguf_tokenizer)
  # Cut inside the tensor data: every header field fits, a tensor does not.
  path = tmp_path / "short.gguf"
  path.write_bytes(data[:-10])
  assert "spans bytes" in _corrupt(path, load_gguf)


def test_huge_declared_array_count_fails_at_once(
  gguf_file, tmp_path, no_gguf_reader
):
  _, data, layout = gguf_file
  # The 14 KB file of issue 15: a billion-entry token array.
  hostile = bytearray(data[: 14 * 1024])
  struct.pack_into("<Q", hostile, layout["array_count"], 10**9)
  path = tmp_path / "hostile.gguf"
  path.write_bytes(bytes(hostile))
  message = _corrupt(path, load_gguf_tokenizer)
  assert "1000000000 items" in message


@pytest.mark.parametrize(
  "field,fmt,value,what",
  [
    ("tensor_offset", "<Q", 2**62, "spans bytes"),
    ("tensor_offset", "<Q", 3, "not 32-aligned"),
    ("tensor_dim", "<Q", 2**40, "spans bytes"),
    ("tensor_rank", "<I", 9, "rank 9"),
    ("tensor_type", "<I", 999, "unknown type 999"),
    ("kv_count", "<Q", 2**62, "metadata entries"),
    ("token_length", "<Q", 2**62, "item 0 of metadata"),
  ],
)
def test_hostile_header_fields(
  gguf_file, tmp_path, no_gguf_reader, field, fmt, value, what
):
  _, data, layout = gguf_file
  bad = bytearray(data)
  struct.pack_into(fmt, bad, layout[field], value)
  path = tmp_path / "bad.gguf"
  path.write_bytes(bytes(bad))
  assert what in _corrupt(path, load_gguf)


def test_safetensors_truncated_or_hostile(tmp_path):
  valid = tmp_path / "valid.safetensors"
  weights.write_safetensors(valid)
  data = valid.read_bytes()
  model = tmp_path / "model" / "model.safetensors"
  model.parent.mkdir()
  for bad in (
    data[:5],
    data[:100],
    data[:-7],
    struct.pack("<Q", 2**62) + data[8:],
    struct.pack("<Q", 8) + b"{" + b" " * 7 + data[16:],
  ):
    model.write_bytes(bad)
    with pytest.raises(CorruptWeightsError) as info:
      read_tensors(model.parent)
    assert str(info.value).startswith(f"{model}: truncated or corrupt ")
  model.write_bytes(data)
  assert set(read_tensors(model.parent)) >= {"model.embed_tokens.weight"}


def test_checksum_mismatch_is_detected_and_a_match_hashed_once(
  tmp_path, monkeypatch
):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"weights" * 1000)
  good = files.sha256(path)
  calls = []
  real = files.sha256
  monkeypatch.setattr(files, "sha256", lambda p: calls.append(p) or real(p))
  cache = tmp_path / "cache"
  model_packages.verify_sha256(path, good, "fix it", cache)
  # A new process: only the record on disk remains.
  monkeypatch.setattr(model_packages, "_verified", {})
  model_packages.verify_sha256(path, good, "fix it", cache)
  assert len(calls) == 1
  # Same size, new content and mtime: hashed again, and caught.
  path.write_bytes(b"weightz" * 1000)
  os.utime(path, ns=(1, 1))
  with pytest.raises(ValueError, match=re.escape(f"{path.resolve()}: sha256")):
    model_packages.verify_sha256(path, good, "fix it", cache)
  assert len(calls) == 2


def test_every_packaged_model_has_a_checksum():
  for digest in (model_packages.SMOLLM2_SHA256, model_packages.GEMMA3_SHA256):
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
