"""Weight-file drill: truncated, hostile and corrupted GGUF and safetensors.

A small but complete Llama-architecture GGUF file (tokenizer included) and
an HF-style safetensors checkpoint are written, then damaged in every way a
download or a hostile file can: truncation at many points, header fields
overwritten with huge counts, lengths, ranks, dimensions, types, offsets
and alignments, bytes flipped in the header and in the tensor data, and
(safetensors) a rewritten JSON header describing tensors that do not fit.
Each case loads the file with the project's own readers (``load_gguf`` and
``load_gguf_tokenizer``; ``read_tensors``) and must finish within
``TIME_LIMIT_S`` and allocate at most ``MEMORY_FACTOR`` times the file's
size plus ``MEMORY_ALLOWANCE`` (tracemalloc peak, which numpy reports to).

Outcomes: ``rejected_with_location`` (an error naming the file and saying
it is truncated or corrupt), ``caught_by_checksum`` (damage that leaves a
structurally valid file, so the reader accepts it and the SHA-256 check of
``model_packages.verify_sha256`` must catch it), ``accepted_valid`` (the
undamaged file), and the defects ``silently_accepted``,
``error_without_location``, ``crash_on_valid``, ``too_slow`` and
``too_much_memory``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import pathlib
import random
import signal
import struct
import tempfile
import threading
import time
import tracemalloc
import warnings

import gguf
import numpy as np

from ilm_jax.convert import model_packages
from ilm_jax.convert.gguf_checkpoint import load_gguf
from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.safetensors_reader import SINGLE_FILE, read_tensors
from ilm_jax.drills.table import DrillRow

TIME_LIMIT_S = 5.0
MEMORY_FACTOR = 2.0
# Plus this much for the error itself (message, traceback), which a tiny
# truncated file would otherwise be billed twice its few bytes for.
MEMORY_ALLOWANCE = 64 << 10
# A case still running after this long is stopped (and counted too slow).
_HARD_LIMIT_S = 60
_HUGE = 2**62

# The tiny model: Llama layout, one block, tied embeddings.
_VOCAB, _DIM, _HEADS, _KV_HEADS, _MLP = 64, 128, 4, 2, 256
_HEAD_DIM = _DIM // _HEADS


@dataclasses.dataclass
class WeightCase:
  """One damaged (or intact) weight file.

  Attributes:
    family: the row of the drill table it counts in.
    data: the file's bytes.
    kind: "gguf" or "safetensors".
    damaged: False only for the intact control file.
    index: for safetensors, an optional index.json text (sharded layout).
    expected_sha256: the intact file's digest, which a damaged file that
      the reader accepts must fail.
  """

  family: str
  data: bytes
  kind: str
  damaged: bool = True
  index: str | None = None
  expected_sha256: str = ""


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """GGUF-named float32 tensors of the tiny model (numpy row-major)."""

  def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  out = {"token_embd.weight": w(_VOCAB, _DIM), "output_norm.weight": w(_DIM)}
  blk = "blk.0."
  out.update(
    {
      blk + "attn_norm.weight": w(_DIM),
      blk + "attn_q.weight": w(_HEADS * _HEAD_DIM, _DIM),
      blk + "attn_k.weight": w(_KV_HEADS * _HEAD_DIM, _DIM),
      blk + "attn_v.weight": w(_KV_HEADS * _HEAD_DIM, _DIM),
      blk + "attn_output.weight": w(_DIM, _HEADS * _HEAD_DIM),
      blk + "ffn_norm.weight": w(_DIM),
      blk + "ffn_gate.weight": w(_MLP, _DIM),
      blk + "ffn_up.weight": w(_MLP, _DIM),
      blk + "ffn_down.weight": w(_DIM, _MLP),
    }
  )
  return out


def write_gguf(path: pathlib.Path, seed: int = 0) -> None:
  """A small, valid Llama GGUF file with a byte-level BPE tokenizer."""
  rng = np.random.default_rng(seed)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.add_context_length(64)
  writer.add_embedding_length(_DIM)
  writer.add_feed_forward_length(_MLP)
  writer.add_head_count(_HEADS)
  writer.add_head_count_kv(_KV_HEADS)
  writer.add_rope_freq_base(10_000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  letters = [chr(ord("a") + i) for i in range(26)]
  merges = ["a b", "c d", "ab cd"]
  tokens = letters + ["ab", "cd", "abcd", "<|im_end|>"]
  tokens += [f"t{i}" for i in range(_VOCAB - len(tokens))]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types([3 if t == "<|im_end|>" else 1 for t in tokens])
  writer.add_token_merges(merges)
  writer.add_eos_token_id(tokens.index("<|im_end|>"))
  for name, value in _tensors(rng).items():
    writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def write_safetensors(path: pathlib.Path, seed: int = 0) -> None:
  """A small safetensors file in the HF layout (float32, float16, int64)."""
  rng = np.random.default_rng(seed)
  tensors = {
    "model.embed_tokens.weight": rng.standard_normal((_VOCAB, _DIM)),
    "model.norm.weight": rng.standard_normal(_DIM).astype(np.float16),
    "model.layers.0.mlp.up_proj.weight": rng.standard_normal((_MLP, _DIM)),
    "position_ids": np.arange(64, dtype=np.int64),
  }
  header, chunks, offset = {}, [], 0
  dtypes = {
    "float64": "F32",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
  }
  for name, value in tensors.items():
    if value.dtype == np.float64:
      value = value.astype(np.float32)
    raw = np.ascontiguousarray(value).tobytes()
    header[name] = {
      "dtype": dtypes[str(value.dtype)],
      "shape": list(value.shape),
      "data_offsets": [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  path.write_bytes(_safetensors_bytes(header, b"".join(chunks)))


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + data


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
  (n,) = struct.unpack_from("<Q", data)
  return json.loads(data[8 : 8 + n]), data[8 + n :]


# ------------------------------------------------------------------- cases


def _gguf_layout(path: pathlib.Path) -> dict[str, int]:
  """Byte offsets of the header fields the hostile cases overwrite."""
  reader = gguf.GGUFReader(path)
  tokens = reader.fields["tokenizer.ggml.tokens"]
  key = len(b"tokenizer.ggml.tokens")
  first = reader.tensors[0].field.offset
  name_len = len(reader.tensors[0].name.encode())
  rank_at = first + 8 + name_len
  n_dims = len(reader.tensors[0].shape)
  type_at = rank_at + 4 + 8 * n_dims
  data_start = min(t.data_offset for t in reader.tensors)
  return {
    "tensor_count": 8,
    "kv_count": 16,
    "first_key_length": 24,
    "array_count": tokens.offset + 8 + key + 4 + 4,
    "token_length": tokens.offset + 8 + key + 4 + 4 + 8,
    "tensor_name_length": first,
    "tensor_rank": rank_at,
    "tensor_dim": rank_at + 4,
    "tensor_type": type_at,
    "tensor_offset": type_at + 4,
    "data_start": data_start,
  }


def _put(data: bytes, at: int, fmt: str, value) -> bytes:
  out = bytearray(data)
  struct.pack_into(fmt, out, at, value)
  return bytes(out)


def gguf_cases(valid: bytes, layout: dict, rng: random.Random) -> list:
  """Truncated, hostile and bit-flipped variants of a valid GGUF file."""
  cases = [WeightCase("gguf: intact", valid, "gguf", damaged=False)]
  header_end = layout["data_start"]
  cuts = sorted(
    set(range(0, header_end, max(1, header_end // 120)))
    | {rng.randrange(header_end, len(valid)) for _ in range(40)}
    | {len(valid) - 1, len(valid) - 4, 23, 24}
  )
  for cut in cuts:
    cases.append(WeightCase("gguf: truncated", valid[:cut], "gguf"))
  hostile = [
    ("tensor_count", "<Q", _HUGE),
    ("tensor_count", "<Q", 10**6),
    ("kv_count", "<Q", _HUGE),
    ("kv_count", "<Q", 10**9),
    ("first_key_length", "<Q", _HUGE),
    ("first_key_length", "<Q", 10**7),
    ("array_count", "<Q", _HUGE),
    ("array_count", "<Q", 10**9),
    ("array_count", "<Q", 1000),
    ("token_length", "<Q", _HUGE),
    ("token_length", "<Q", 10**8),
    ("tensor_name_length", "<Q", _HUGE),
    ("tensor_rank", "<I", 0),
    ("tensor_rank", "<I", 5),
    ("tensor_rank", "<I", 2**31),
    ("tensor_dim", "<Q", _HUGE),
    ("tensor_dim", "<Q", 10**6),
    ("tensor_dim", "<Q", 0),
    ("tensor_type", "<I", 999),
    ("tensor_type", "<I", 2),  # a quantised type: a different size
    ("tensor_offset", "<Q", _HUGE),
    ("tensor_offset", "<Q", 10**6),
    ("tensor_offset", "<Q", 3),
  ]
  for field, fmt, value in hostile:
    cases.append(
      WeightCase(
        "gguf: hostile header", _put(valid, layout[field], fmt, value), "gguf"
      )
    )
  cases.append(WeightCase("gguf: hostile header", b"GGUF" + valid[4:8], "gguf"))
  cases.append(
    WeightCase("gguf: hostile header", _put(valid, 4, "<I", 99), "gguf")
  )
  cases.append(WeightCase("gguf: hostile header", b"XXXX" + valid[4:], "gguf"))
  # The 14 KB file of the issue: a header declaring a huge array count.
  small = _put(valid, layout["array_count"], "<Q", 10**9)[: 14 * 1024]
  cases.append(WeightCase("gguf: hostile header", small, "gguf"))
  for _ in range(150):
    data = bytearray(valid)
    data[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
    cases.append(WeightCase("gguf: header bit flips", bytes(data), "gguf"))
  for _ in range(20):
    data = bytearray(valid)
    data[rng.randrange(header_end, len(valid))] ^= 1 << rng.randrange(8)
    cases.append(WeightCase("gguf: tensor data bit flips", bytes(data), "gguf"))
  return cases


def safetensors_cases(valid: bytes, rng: random.Random) -> list:
  """Truncated and corrupted variants of a valid safetensors file."""
  kind = "safetensors"
  cases = [WeightCase("safetensors: intact", valid, kind, damaged=False)]
  header, data = _split_safetensors(valid)
  header_end = len(valid) - len(data)
  cuts = sorted(
    set(range(0, header_end, max(1, header_end // 60)))
    | {rng.randrange(header_end, len(valid)) for _ in range(30)}
  )
  for cut in cuts:
    cases.append(WeightCase("safetensors: truncated", valid[:cut], kind))
  for length in (_HUGE, 2**64 - 1, len(valid), 0, 3):
    cases.append(
      WeightCase(
        "safetensors: hostile header", _put(valid, 0, "<Q", length), kind
      )
    )
  name = next(iter(header))
  rewrites = [
    {"dtype": "F99"},
    {"dtype": "F64"},
    {"shape": [_HUGE, _HUGE]},
    {"shape": [-1, 64]},
    {"shape": "64"},
    {"data_offsets": [0, _HUGE]},
    {"data_offsets": [len(data), len(data) + 4]},
    {"data_offsets": [8, 4]},
    {"data_offsets": [0]},
  ]
  for change in rewrites:
    bad = json.loads(json.dumps(header))
    bad[name].update(change)
    cases.append(
      WeightCase(
        "safetensors: hostile header", _safetensors_bytes(bad, data), kind
      )
    )
  for bad_text in (b"[]", b"{", b'{"a": 1}', b"\xff" * 16):
    bad_text += b" " * (-len(bad_text) % 8)
    cases.append(
      WeightCase(
        "safetensors: hostile header",
        struct.pack("<Q", len(bad_text)) + bad_text + data,
        kind,
      )
    )
  for _ in range(80):
    flipped = bytearray(valid)
    flipped[rng.randrange(8, header_end)] ^= 1 << rng.randrange(8)
    cases.append(
      WeightCase("safetensors: header bit flips", bytes(flipped), kind)
    )
  for _ in range(20):
    flipped = bytearray(valid)
    flipped[rng.randrange(header_end, len(valid))] ^= 1 << rng.randrange(8)
    cases.append(
      WeightCase("safetensors: tensor data bit flips", bytes(flipped), kind)
    )
  for index in (
    "{",
    '{"weight_map": []}',
    '{"weight_map": {"x": "missing.safetensors"}}',
  ):
    cases.append(WeightCase("safetensors: index", valid, kind, index=index))
  return cases


# ------------------------------------------------------------------- runs


class _TooSlowError(Exception):
  pass


@contextlib.contextmanager
def _deadline(seconds: int):
  """Stops a case that runs away (main thread only; elsewhere, no limit)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def expire(*_):
    raise _TooSlowError()

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _load(case: WeightCase, path: pathlib.Path) -> None:
  if case.kind == "gguf":
    load_gguf(path)
    load_gguf_tokenizer(path)
  else:
    read_tensors(path.parent)


def run_weight_case(case: WeightCase, directory: pathlib.Path) -> str:
  """Writes, loads and classifies one case; returns its outcome name."""
  directory.mkdir(parents=True)
  name = "model.gguf" if case.kind == "gguf" else SINGLE_FILE
  path = directory / name
  path.write_bytes(case.data)
  if case.index is not None:
    path = directory / "model-00001-of-00001.safetensors"
    (directory / SINGLE_FILE).rename(path)
    (directory / "model.safetensors.index.json").write_text(case.index)
  error = None
  tracemalloc.start()
  start = time.perf_counter()
  try:
    # Damaged weights make numpy warn (NaN scales); the outcome says enough.
    with _deadline(_HARD_LIMIT_S), warnings.catch_warnings():
      warnings.simplefilter("ignore")
      _load(case, path)
  except _TooSlowError:
    error = "too slow"
  except Exception as e:  # every failure is classified, none escapes
    error = e
  elapsed = time.perf_counter() - start
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  if elapsed > TIME_LIMIT_S or error == "too slow":
    return "too_slow"
  if peak > MEMORY_FACTOR * len(case.data) + MEMORY_ALLOWANCE:
    return "too_much_memory"
  if error is not None:
    if not case.damaged:
      return "crash_on_valid"
    message = str(error)
    named = str(directory) in message
    said = "truncated or corrupt" in message or case.index is not None
    return (
      "rejected_with_location" if named and said else "error_without_location"
    )
  if not case.damaged:
    return "accepted_valid"
  return _checksum_outcome(case, path)


def _checksum_outcome(case: WeightCase, path: pathlib.Path) -> str:
  """A damaged file the reader accepted: the recorded SHA-256 must differ."""
  try:
    model_packages.verify_sha256(
      path, case.expected_sha256, "drill", cache_dir=path.parent / "cache"
    )
  except ValueError as e:
    return (
      "caught_by_checksum"
      if str(path.resolve()) in str(e)
      else ("error_without_location")
    )
  return "silently_accepted"


def weights_drill(seed: int = 0, progress=None) -> list[DrillRow]:
  """Runs every GGUF and safetensors case; one row per case family.

  Args:
    seed: changes the truncation points and flipped bytes.
    progress: optional callable(n) told after each case (a progress bar).
  """
  rng = random.Random(seed)
  counts: dict[str, collections.Counter] = collections.defaultdict(
    collections.Counter
  )
  with tempfile.TemporaryDirectory(prefix="weights-") as tmp:
    tmp = pathlib.Path(tmp)
    write_gguf(tmp / "valid.gguf", seed)
    write_safetensors(tmp / "valid.safetensors", seed)
    valid_gguf = (tmp / "valid.gguf").read_bytes()
    valid_st = (tmp / "valid.safetensors").read_bytes()
    cases = gguf_cases(valid_gguf, _gguf_layout(tmp / "valid.gguf"), rng)
    cases += safetensors_cases(valid_st, rng)
    digests = {
      "gguf": hashlib.sha256(valid_gguf).hexdigest(),
      "safetensors": hashlib.sha256(valid_st).hexdigest(),
    }
    # Warm up imports and caches so the first case is not billed for them.
    _load(cases[0], tmp / "valid.gguf")
    for kind, data in (("gguf", valid_gguf), ("safetensors", valid_st)):
      with contextlib.suppress(Exception):
        run_weight_case(WeightCase("", data[:100], kind), tmp / f"warm{kind}")
    for i, case in enumerate(cases):
      case.expected_sha256 = digests[case.kind]
      outcome = run_weight_case(case, tmp / f"case{i}")
      counts[case.family][outcome] += 1
      if progress is not None:
        progress(1)
  return [DrillRow("weights", family, c) for family, c in counts.items()]
