"""State files written whole or not at all, and read with errors that name them.

A run killed mid-write must not leave half a file that the next run trips
over (or, worse, silently reads as empty): every state file is written to a
temporary file beside it, flushed to disk, and renamed over the old one, which
POSIX makes atomic; the directory is then flushed too, so the rename itself
survives a power cut. Readers name the file and say what to do when one is
damaged.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from ilm_jax import distributed


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
  if _remote(path):
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


def read_json(path: str | pathlib.Path, way_out: str = "") -> Any:
  """The JSON value in ``path``.

  Args:
    path: the file.
    way_out: what the user should do if it is damaged (default: restore or
      delete it so the stage that writes it runs again).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: ``path`` is not valid JSON (or not text); the message names
      the file, where the parser stopped, and the way out.
  """
  path = epath.Path(path) if _remote(path) else pathlib.Path(path)
  way_out = way_out or (
    "restore it or delete it to have the stage that writes it run again"
  )
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path}:{e.lineno}:{e.colno}: damaged JSON ({e.msg}); {way_out}"
    ) from e
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{path}: damaged JSON (not UTF-8 text at byte {e.start}); {way_out}"
    ) from e


def _remote(path) -> bool:
  """Whether ``path`` names object storage (``gs://...``), not a local file."""
  return "://" in str(path)
