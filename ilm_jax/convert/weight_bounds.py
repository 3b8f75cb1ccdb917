"""Weight-file headers checked against the file's size before any read.

A GGUF or safetensors header declares counts, lengths and offsets; a
truncated or hostile file can declare more than it holds (a 14 KB file
claiming a billion-entry array), and readers that trust the header then
loop or allocate without bound. These checks walk the header with every
declared count multiplied by its smallest possible size and compared with
the bytes that remain, and every tensor's offset plus size compared with
the data section, so a bad file fails at once, naming itself.
"""

from __future__ import annotations

import json
import math
import mmap
import pathlib
import struct

import gguf

_V = gguf.GGUFValueType
# Bytes of each fixed-size GGUF value type.
_SCALAR_BYTES = {
  _V.UINT8: 1,
  _V.INT8: 1,
  _V.BOOL: 1,
  _V.UINT16: 2,
  _V.INT16: 2,
  _V.UINT32: 4,
  _V.INT32: 4,
  _V.FLOAT32: 4,
  _V.UINT64: 8,
  _V.INT64: 8,
  _V.FLOAT64: 8,
}
# Smallest encodings: a key/value (empty key, type, 1-byte value), a tensor
# info (empty name, n_dims, type, offset), a string (its length), an array.
_MIN_KV = 8 + 4 + 1
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8
_MIN_STRING = 8
_MIN_ARRAY = 4 + 8
_MAX_DIMS = 4  # llama.cpp's GGML_MAX_DIMS
_MAX_NESTING = 4
_GGUF_VERSIONS = (2, 3)
# safetensors dtype names -> bytes per element.
SAFETENSORS_DTYPES = {
  "BOOL": 1,
  "U8": 1,
  "I8": 1,
  "F8_E5M2": 1,
  "F8_E4M3": 1,
  "U16": 2,
  "I16": 2,
  "F16": 2,
  "BF16": 2,
  "U32": 4,
  "I32": 4,
  "F32": 4,
  "U64": 8,
  "I64": 8,
  "F64": 8,
}
# The safetensors library's own cap on the JSON header.
MAX_SAFETENSORS_HEADER = 100_000_000


class CorruptWeightsError(ValueError):
  """A weight file is truncated or corrupt; the message starts with its path.

  Attributes:
    path: the file.
  """

  def __init__(self, path, kind: str, detail: str):
    super().__init__(
      f"{path}: truncated or corrupt {kind} file: {detail}; download or "
      "convert it again"
    )
    self.path = str(path)


class _Cursor:
  """Reads little-endian header fields, never past the file's end."""

  def __init__(self, path: pathlib.Path, buf, size: int):
    self.path, self.buf, self.size, self.pos = path, buf, size, 0

  def fail(self, detail: str):
    raise CorruptWeightsError(self.path, "GGUF", detail)

  def need(self, n: int, what: str):
    if n > self.size - self.pos:
      self.fail(
        f"{what} needs {n} bytes at offset {self.pos} but the file has "
        f"{self.size - self.pos} left"
      )

  def unpack(self, fmt: str, what: str):
    n = struct.calcsize(fmt)
    self.need(n, what)
    (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += n
    return value

  def string(self, what: str, decode: bool = False) -> str | None:
    n = self.unpack("<Q", f"the length of {what}")
    self.need(n, what)
    raw = self.buf[self.pos : self.pos + n] if decode else None
    self.pos += n
    if raw is None:
      return None
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      self.fail(f"{what} at offset {self.pos - n} is not UTF-8")

  def value(self, value_type: int, what: str, depth: int = 0):
    """Skips one value, returning it when it is a scalar."""
    if value_type in _SCALAR_BYTES:
      fmt = "<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[_SCALAR_BYTES[value_type]]
      return self.unpack(fmt, what)
    if value_type == _V.STRING:
      self.string(what)
      return None
    if value_type != _V.ARRAY:
      self.fail(f"{what} has unknown value type {value_type}")
    if depth >= _MAX_NESTING:
      self.fail(f"{what} nests arrays more than {_MAX_NESTING} deep")
    item_type = self.unpack("<I", f"the item type of {what}")
    count = self.unpack("<Q", f"the item count of {what}")
    if item_type in _SCALAR_BYTES:
      self.need(count * _SCALAR_BYTES[item_type], f"{what} ({count} items)")
      self.pos += count * _SCALAR_BYTES[item_type]
      return None
    least = _MIN_STRING if item_type == _V.STRING else _MIN_ARRAY
    self.need(count * least, f"{what} ({count} items)")
    if item_type == _V.STRING:
      self._skip_strings(count, what)
      return None
    for i in range(count):
      self.value(item_type, f"item {i} of {what}", depth + 1)
    return None

  def _skip_strings(self, count: int, what: str):
    # A tight loop: tokenizer vocabularies hold 10^5 strings.
    buf, size, pos = self.buf, self.size, self.pos
    unpack_from = struct.unpack_from
    for i in range(count):
      if pos + 8 > size:
        self.pos = pos
        self.need(8, f"the length of item {i} of {what}")
      (n,) = unpack_from("<Q", buf, pos)
      pos += 8 + n
      if pos > size:
        self.pos = pos - n
        self.need(n, f"item {i} of {what}")
    self.pos = pos


def check_gguf(path: str | pathlib.Path) -> None:
  """Checks a GGUF file's header and tensor extents against its size.

  Raises:
    FileNotFoundError: no such file.
    CorruptWeightsError: anything the header declares does not fit.
  """
  path = pathlib.Path(path)
  size = path.stat().st_size
  if size < 24:
    raise CorruptWeightsError(
      path, "GGUF", f"{size} bytes, shorter than a GGUF header (24)"
    )
  with (
    open(path, "rb") as f,
    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf,
  ):
    _check_gguf(_Cursor(path, buf, size))


def _check_gguf(c: _Cursor):
  if c.buf[:4] != b"GGUF":
    c.fail(f"starts with {bytes(c.buf[:4])!r}, not the GGUF magic")
  c.pos = 4
  version = c.unpack("<I", "the version")
  if version not in _GGUF_VERSIONS:
    c.fail(f"version {version} (this reader handles {_GGUF_VERSIONS})")
  tensor_count = c.unpack("<Q", "the tensor count")
  kv_count = c.unpack("<Q", "the metadata count")
  c.need(
    kv_count * _MIN_KV + tensor_count * _MIN_TENSOR_INFO,
    f"{kv_count} metadata entries and {tensor_count} tensor infos",
  )
  alignment = gguf.GGUF_DEFAULT_ALIGNMENT
  for i in range(kv_count):
    key = c.string(f"the key of metadata entry {i}", decode=True)
    value_type = c.unpack("<I", f"the type of {key!r}")
    value = c.value(value_type, f"metadata {key!r}")
    if key == "general.alignment":
      if value_type != _V.UINT32 or not value or value & (value - 1):
        c.fail(f"general.alignment {value!r} is not a power of two")
      alignment = value
  extents, names = [], set()
  for i in range(tensor_count):
    name = c.string(f"the name of tensor {i}", decode=True)
    if name in names:
      c.fail(f"tensor {name!r} listed twice")
    names.add(name)
    n_dims = c.unpack("<I", f"the rank of tensor {name!r}")
    if not 1 <= n_dims <= _MAX_DIMS:
      c.fail(f"tensor {name!r} has rank {n_dims} (1..{_MAX_DIMS} allowed)")
    dims = [
      c.unpack("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims)
    ]
    raw_type = c.unpack("<I", f"the type of tensor {name!r}")
    offset = c.unpack("<Q", f"the offset of tensor {name!r}")
    try:
      block, type_bytes = gguf.GGML_QUANT_SIZES[
        gguf.GGMLQuantizationType(raw_type)
      ]
    except (ValueError, KeyError):
      c.fail(f"tensor {name!r} has unknown type {raw_type}")
    if dims[0] % block:
      c.fail(
        f"tensor {name!r}: first dimension {dims[0]} is not a multiple of "
        f"its type's block of {block}"
      )
    n_bytes = math.prod(dims) // block * type_bytes
    extents.append((name, offset, n_bytes))
  data_start = -(-c.pos // alignment) * alignment
  for name, offset, n_bytes in extents:
    if offset % alignment:
      c.fail(f"tensor {name!r} offset {offset} is not {alignment}-aligned")
    end = data_start + offset + n_bytes
    if end > c.size:
      c.fail(
        f"tensor {name!r} spans bytes {data_start + offset}..{end} but the "
        f"file has {c.size}"
      )


def check_safetensors(path: str | pathlib.Path) -> tuple[dict, int]:
  """The checked JSON header of a safetensors file.

  Returns:
    (the header: tensor name -> {"dtype", "shape", "data_offsets"} and an
    optional ``__metadata__``; the byte offset where tensor data starts).

  Raises:
    FileNotFoundError: no such file.
    CorruptWeightsError: a header that does not fit the file or describe
      its tensors consistently.
  """
  path = pathlib.Path(path)
  size = path.stat().st_size

  def fail(detail):
    raise CorruptWeightsError(path, "safetensors", detail)

  if size < 8:
    fail(f"{size} bytes, shorter than the 8-byte header length")
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
      fail(f"declares a {header_len}-byte header in a {size}-byte file")
    raw = f.read(header_len)
  try:
    header = json.loads(raw)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    fail(f"the JSON header does not parse ({e})")
  if not isinstance(header, dict):
    fail("the JSON header is not an object")
  data_size = size - 8 - header_len
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if not isinstance(entry, dict):
      fail(f"tensor {name!r}: entry is not an object")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
      fail(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not (
      isinstance(shape, list)
      and all(type(n) is int and n >= 0 for n in shape)
      and isinstance(offsets, list)
      and len(offsets) == 2
      and all(type(n) is int for n in offsets)
    ):
      fail(f"tensor {name!r}: malformed shape {shape!r} or offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
      fail(
        f"tensor {name!r}: bytes {begin}..{end} outside the {data_size}-byte "
        "data section"
      )
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
      fail(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype}")
  return header, 8 + header_len
