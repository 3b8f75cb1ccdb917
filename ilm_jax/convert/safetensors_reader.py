"""Reads tensors of an HF checkpoint directory with numpy only (no torch).

A directory holds ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. safetensors' numpy API reads every dtype
numpy knows; bfloat16, which numpy lacks, is read from the file's byte
offsets and viewed as ``ml_dtypes.bfloat16`` (the dtype jax uses).

Each file's header is checked against the file's size before any tensor is
read (``weight_bounds.check_safetensors``); every reader error names the file
and says it is truncated or corrupt.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import safetensors

from ilm_jax.convert.weight_bounds import CorruptWeightsError, check_safetensors

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
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
      names = sorted(set(weight_map.values()))
      files = [directory / name for name in names]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise CorruptWeightsError(
        index, "safetensors index", f"{type(e).__name__}: {e}"
      ) from None
    for path in files:
      if not path.is_file():
        raise FileNotFoundError(
          f"{index}: lists shard {path.name}, which is missing; download "
          "the checkpoint again"
        )
    return files
  raise FileNotFoundError(
    f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (not an HF checkpoint "
    "directory with safetensors weights)"
  )


def _read_bfloat16(path: pathlib.Path, entry: dict, data_start: int):
  begin, end = entry["data_offsets"]
  raw = np.fromfile(
    path, dtype=np.uint16, count=(end - begin) // 2, offset=data_start + begin
  )
  return raw.view(ml_dtypes.bfloat16).reshape(entry["shape"])


def iter_tensors(
  directory: str | pathlib.Path,
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, numpy array) for every tensor of the checkpoint.

  Raises:
    CorruptWeightsError: a truncated or corrupt file, named.
  """
  for path in checkpoint_files(directory):
    header, data_start = check_safetensors(path)
    try:
      with safetensors.safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
          if header[name]["dtype"] == "BF16":
            value = _read_bfloat16(path, header[name], data_start)
          else:
            value = f.get_tensor(name)
          yield name, value
    except CorruptWeightsError:
      raise
    except Exception as e:  # the safetensors library's errors name no file
      raise CorruptWeightsError(
        path, "safetensors", f"{type(e).__name__}: {e}"
      ) from e


def read_tensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint, by HF name."""
  return dict(iter_tensors(directory))
