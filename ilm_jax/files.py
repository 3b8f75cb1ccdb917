"""State files written whole or not at all, and read with errors that name them.

A run killed mid-write must not leave half a file that the next run trips
over (or, worse, silently reads as empty): every state file is written to a
temporary file beside it, flushed to disk, and renamed over the old one, which
POSIX makes atomic; the directory is then flushed too, so the rename itself
survives a power cut. Readers name the file and say what to do when one is
damaged.

Paths may name object storage (``gs://bucket/run``): ``path`` keeps them
remote (``etils.epath``, as orbax does), where ``pathlib`` would turn them
into a local folder ``gs:/bucket/run``; every workdir path of the stages is
built through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from ilm_jax import distributed


def path(p, absolute: bool = False) -> pathlib.Path | epath.Path:
  """``p`` as a path of its own kind, whose sub-paths keep that kind.

  Args:
    p: a local path, or object storage (``gs://bucket/run``: any
      ``scheme://``), as a string or a path object.
    absolute: make a local path absolute (orbax wants absolute paths;
      object storage paths are absolute already).

  Returns:
    An ``etils.epath.Path`` for object storage (``str`` gives back
    ``gs://bucket/run``, ``/`` keeps the scheme; ``pathlib.Path`` would
    drop a slash and write to a local folder), else a ``pathlib.Path``.
  """
  if is_remote(p):
    return epath.Path(p)
  local = pathlib.Path(p)
  return local.absolute() if absolute else local


def is_remote(p) -> bool:
  """Whether ``p`` names object storage (``gs://...``), not a local file."""
  return "://" in str(p)


def sha256(p) -> str:
  """Hex SHA-256 of a file's bytes, local or in object storage."""
  digest = hashlib.sha256()
  with path(p).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fsync_path(path: str | pathlib.Path) -> None:
  """Flushes a written file, or a rename in a directory, to disk (where
  the OS allows it), for writers that take a path rather than a file
  object (e.g. array_record's)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:  # e.g. a platform without directory handles
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def open_atomic(path: str | pathlib.Path, mode: str = "w") -> Iterator[IO]:
  """A file object whose contents replace ``path`` only when the block ends.

  Writes go to ``.<name>.tmp.<pid>`` beside ``path``; on a clean exit the
  file is flushed and fsynced, renamed over ``path`` and the directory
  fsynced. If the block raises, ``path`` is untouched and the temporary file
  removed. For writers that take a file object (``np.save``,
  ``fig.savefig(f, format=...)``).

  Args:
    path: the file to replace (its directory is created if needed).
    mode: ``"w"`` (text) or ``"wb"`` (bytes).
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"open_atomic writes only, mode 'w' or 'wb', not {mode!r}")
  if not distributed.is_primary():
    # Process 0 of a multi-host job writes the job's files; the others
    # compute the same contents and discard them.
    with open(os.devnull, mode) as f:
      yield f
    return
  if is_remote(path):
    # gs://...: an object is written whole or not at all by itself.
    with epath.Path(path).open(mode) as f:
      yield f
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  fsync_path(path.parent)


def write_bytes(path: str | pathlib.Path, data: bytes) -> None:
  """Replaces ``path`` with ``data`` atomically."""
  with open_atomic(path, "wb") as f:
    f.write(data)


def write_text(path: str | pathlib.Path, text: str) -> None:
  """Replaces ``path`` with ``text`` atomically."""
  with open_atomic(path, "w") as f:
    f.write(text)


def write_json(
  path: str | pathlib.Path, value: Any, indent: int = 2, **dumps_kwargs
) -> None:
  """Replaces ``path`` with ``value`` as JSON, atomically.

  ``dumps_kwargs`` go to ``json.dumps`` (e.g. ``default=str``).
  """
  write_text(path, json.dumps(value, indent=indent, **dumps_kwargs))


def save_npy(path: str | pathlib.Path, array) -> None:
  """Replaces ``path`` with ``array`` in ``.npy`` format, atomically."""
  import numpy as np  # Only array writers need it.

  with open_atomic(path, "wb") as f:
    np.save(f, np.asarray(array))


def read_json(file: str | pathlib.Path, way_out: str = "") -> Any:
  """The JSON value in ``file``.

  Args:
    file: the file (local or object storage).
    way_out: what the user should do if it is damaged (default: restore or
      delete it so the stage that writes it runs again).

  Raises:
    FileNotFoundError: ``file`` does not exist.
    ValueError: ``file`` is not valid JSON (or not text); the message names
      the file, where the parser stopped, and the way out.
  """
  file = path(file)
  way_out = way_out or (
    "restore it or delete it to have the stage that writes it run again"
  )
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{file}:{e.lineno}:{e.colno}: damaged JSON ({e.msg}); {way_out}"
    ) from e
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{file}: damaged JSON (not UTF-8 text at byte {e.start}); {way_out}"
    ) from e
