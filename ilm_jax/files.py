"""State files written whole or not at all, and read with errors that name them.

A run killed mid-write must not leave half a JSON file that the next run
trips over (or, worse, silently reads as empty): every state file is written
to a temporary file beside it and renamed over the old one, which POSIX
makes atomic. Readers name the file and say what to do when one is damaged.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from etils import epath

from ilm_jax import distributed


def write_text(path: str | pathlib.Path, text: str) -> None:
  """Replaces ``path`` with ``text`` atomically (temporary file + rename).

  Only process 0 of a multi-host job writes (``distributed.is_primary``);
  a ``gs://`` path is written as one object, which is whole or absent.
  """
  if not distributed.is_primary():
    return
  if _remote(path):
    epath.Path(path).write_text(text)
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path: str | pathlib.Path, value: Any, indent: int = 2) -> None:
  """Replaces ``path`` with ``value`` as JSON, atomically."""
  write_text(path, json.dumps(value, indent=indent))


def read_json(path: str | pathlib.Path) -> Any:
  """The JSON value in ``path``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: ``path`` is not valid JSON; the message names the file and
      where the parser stopped.
  """
  path = epath.Path(path) if _remote(path) else pathlib.Path(path)
  text = path.read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path}:{e.lineno}:{e.colno}: damaged JSON ({e.msg}); restore it or "
      "delete it to have the stage that writes it run again"
    ) from e


def _remote(path) -> bool:
  """Whether ``path`` names object storage (``gs://...``), not a local file."""
  return "://" in str(path)
