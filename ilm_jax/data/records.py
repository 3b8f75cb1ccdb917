"""Training examples on disk: an array_record file plus an index sidecar.

A stage writes its training examples once (``write_records``) and every host
reads them back by position (``RecordSource``, a grain random-access
source). Each record is one example, a dict of numpy arrays and scalars
serialised with flax's msgpack. Beside ``name.array_record`` the sidecar
``name.index.npz`` holds small per-example arrays that every host needs in
full to plan batches (e.g. lengths), the record count and a SHA-256 of the
serialised records: a file whose count and hash match what a run would write
is reused (a resumed run reads the very examples it started with), anything
else is rewritten. Neither writing nor reading needs TensorFlow.

In object storage (a ``gs://`` workdir) the array_record file is written
locally and uploaded whole (the sidecar last, as on a disk), and readers
read a local copy named by the records' hash, downloaded once per machine:
array_record reads and writes local files only.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import tempfile
from collections.abc import Iterable

import grain
import numpy as np
from array_record.python import array_record_module
from etils import epath
from flax import serialization

from ilm_jax import files

RECORD_SUFFIX = ".array_record"
INDEX_SUFFIX = ".index.npz"
# One record per chunk: reads are random access, one example at a time.
_WRITER_OPTIONS = "group_size:1"


def _paths(path) -> tuple[pathlib.Path, pathlib.Path]:
  # gs:// kept (an epath, not a local gs:/ folder).
  path = files.path(path)
  return (
    path.with_name(path.name + RECORD_SUFFIX),
    path.with_name(path.name + INDEX_SUFFIX),
  )


def write_records(
  path, records: Iterable[dict], index: dict[str, np.ndarray] | None = None
) -> bool:
  """Writes examples unless the same ones are already there.

  Args:
    path: file stem; writes ``path.array_record`` and ``path.index.npz``.
    records: the examples, dicts of numpy arrays, scalars, strings and lists
      of arrays.
    index: per-example arrays every host needs for planning (leading axis
      N, the record count, or any shape); saved in the sidecar.

  Returns:
    True when written, False when an identical file was reused.
  """
  data_path, index_path = _paths(path)
  blobs = [serialization.msgpack_serialize(r) for r in records]
  digest = hashlib.sha256()
  for blob in blobs:
    digest.update(len(blob).to_bytes(8, "little"))
    digest.update(blob)
  sha = np.frombuffer(digest.digest(), np.uint8)
  if data_path.exists() and index_path.exists():
    with _load_index(index_path) as old:
      if int(old["_count"]) == len(blobs) and np.array_equal(old["_sha"], sha):
        return False
  data_path.parent.mkdir(parents=True, exist_ok=True)
  if files.is_remote(data_path):
    with tempfile.TemporaryDirectory(prefix="ilm_records") as local:
      local_data = pathlib.Path(local, data_path.name)
      _write_array_record(local_data, blobs)
      # An object is replaced whole by its upload: no rename needed.
      epath.Path(local_data).copy(data_path, overwrite=True)
  else:
    # Written under a temporary name and renamed, so a crash mid-write
    # never leaves a file that looks complete.
    tmp_data = data_path.with_name(data_path.name + ".tmp")
    _write_array_record(tmp_data, blobs)
    files.fsync_path(tmp_data)
    os.replace(tmp_data, data_path)
  # The sidecar goes last (fsynced, renamed, directory fsynced): its count
  # and hash vouch for the records, so a crash before it lands leaves a
  # stale or missing sidecar and the next run writes both again.
  with files.open_atomic(index_path, "wb") as f:
    np.savez(f, _count=len(blobs), _sha=sha, **(index or {}))
  return True


def _write_array_record(local_path: pathlib.Path, blobs: list[bytes]) -> None:
  writer = array_record_module.ArrayRecordWriter(
    str(local_path), _WRITER_OPTIONS
  )
  for blob in blobs:
    writer.write(blob)
  writer.close()


def _load_index(index_path):
  """The sidecar's arrays (an ``NpzFile``), local or in object storage."""
  if files.is_remote(index_path):
    return np.load(io.BytesIO(index_path.read_bytes()))
  return np.load(index_path)


def _local_copy(data_path, sha: np.ndarray) -> pathlib.Path:
  """A local file with ``data_path``'s records: the file itself, or for
  object storage a copy in the temp folder named by the records' hash
  (downloaded under a temporary name, then renamed, once per machine)."""
  if not files.is_remote(data_path):
    return data_path
  cache = pathlib.Path(tempfile.gettempdir(), "ilm_jax_records")
  cache.mkdir(parents=True, exist_ok=True)
  local = cache / f"{bytes(sha).hex()}{RECORD_SUFFIX}"
  if not local.exists():
    part = cache / f".{local.name}.{os.getpid()}"
    data_path.copy(part, overwrite=True)
    os.replace(part, local)
  return local


class RecordSource:
  """Random access to the examples ``write_records`` wrote.

  Attributes:
    index: the sidecar's per-example arrays, by name.
  """

  def __init__(self, path):
    data_path, index_path = _paths(path)
    if not data_path.exists() or not index_path.exists():
      raise FileNotFoundError(f"{data_path}: no examples written here")
    with _load_index(index_path) as saved:
      self.index = {k: saved[k] for k in saved.files if not k.startswith("_")}
      self._count = int(saved["_count"])
      sha = saved["_sha"]
    self._source = grain.sources.ArrayRecordDataSource(
      [str(_local_copy(data_path, sha))]
    )
    if len(self._source) != self._count:
      raise ValueError(
        f"{data_path} holds {len(self._source)} records, its index "
        f"{self._count}: rewrite it"
      )
    self.path = data_path

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, position: int) -> dict:
    return serialization.msgpack_restore(self._source[int(position)])

  def read(self, positions) -> list[dict]:
    """The records at ``positions`` (int[n]), in that order."""
    blobs = self._source.__getitems__([int(p) for p in positions])
    return [serialization.msgpack_restore(b) for b in blobs]

  def __repr__(self) -> str:
    return f"RecordSource({str(self.path)!r}, n={self._count})"
