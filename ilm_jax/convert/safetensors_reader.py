"""Reads tensors of an HF checkpoint directory with numpy only (no torch).

A directory holds ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. safetensors' numpy API reads every dtype
numpy knows; bfloat16, which numpy lacks, is read from the file's byte
offsets and viewed as ``ml_dtypes.bfloat16`` (the dtype jax uses).
"""

from __future__ import annotations

import json
import pathlib
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import safetensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files of an HF checkpoint directory.

  Raises:
    FileNotFoundError: naming the directory when it holds neither layout.
  """
  directory = pathlib.Path(directory)
  if (directory / SINGLE_FILE).exists():
    return [directory / SINGLE_FILE]
  index = directory / INDEX_FILE
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    return [directory / name for name in sorted(set(weight_map.values()))]
  raise FileNotFoundError(
    f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (not an HF checkpoint "
    "directory with safetensors weights)"
  )


def _raw_header(path: pathlib.Path) -> tuple[dict, int]:
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  return header, 8 + header_len


def _read_bfloat16(path: pathlib.Path, name: str) -> np.ndarray:
  header, data_start = _raw_header(path)
  entry = header[name]
  begin, end = entry["data_offsets"]
  raw = np.fromfile(
    path, dtype=np.uint16, count=(end - begin) // 2, offset=data_start + begin
  )
  return raw.view(ml_dtypes.bfloat16).reshape(entry["shape"])


def iter_tensors(
  directory: str | pathlib.Path,
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, numpy array) for every tensor of the checkpoint."""
  for path in checkpoint_files(directory):
    with safetensors.safe_open(str(path), framework="numpy") as f:
      for name in f.keys():
        if f.get_slice(name).get_dtype() == "BF16":
          yield name, _read_bfloat16(path, name)
        else:
          yield name, f.get_tensor(name)


def read_tensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint, by HF name."""
  return dict(iter_tensors(directory))
