"""One run per workdir: an exclusive lock held while a run writes there.

Two runs on one workdir would share its checkpoint directories and state
files and overwrite each other's steps. A run takes ``<workdir>/.lock``
first: an advisory ``flock`` on it, which the kernel drops when the holder
exits, however it exits (kill -9 included), plus the holder's PID and host
written inside, so a second run can say who holds it. A lock file naming a
process that no longer holds the lock (it died) is taken over with a
warning. Within one process the lock is re-entrant (a launcher and the
pipeline it calls may both take it). Object storage (a ``gs://`` workdir)
has no such lock: a run there goes ahead with a warning, unguarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import socket
from collections.abc import Iterator

from ilm_jax import distributed, files

LOCK_FILE = ".lock"
# workdir (resolved) -> [open lock file descriptor, how many holders]
_HELD: dict[pathlib.Path, list[int]] = {}


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock."""


def _holder(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  return os.read(fd, 256).decode(errors="replace").strip()


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """Holds ``workdir``'s lock for the block; yields the lock file's path.

  Raises:
    WorkdirLockedError: another process holds it; the message names the
      lock file, the holder's PID and host, and what to do.
  """
  if files.is_remote(workdir):
    # A bucket offers no lock that dies with its holder (flock does).
    if distributed.is_primary():
      logging.warning(
        "%s: object storage cannot be locked; make sure no other run "
        "writes to this workdir",
        workdir,
      )
    yield files.path(workdir) / LOCK_FILE
    return
  workdir = pathlib.Path(workdir).resolve()
  path = workdir / LOCK_FILE
  if not distributed.is_primary():
    # One multi-host job is one run: its process 0 holds the lock for all.
    yield path
    return
  if workdir in _HELD:
    _HELD[workdir][1] += 1
    try:
      yield path
    finally:
      _HELD[workdir][1] -= 1
    return
  workdir.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd) or "an unknown process"
    os.close(fd)
    raise WorkdirLockedError(
      f"{path}: workdir {workdir} is in use by {holder}; two runs on one "
      "workdir would overwrite each other's checkpoints. Wait for it to "
      "finish, stop it, or pass another --workdir."
    ) from None
  stale = _holder(fd)
  if stale:
    # The lock was free, so whoever wrote this is gone without cleaning up.
    logging.warning(
      "%s: taking over a stale lock left by %s (no longer running)",
      path,
      stale,
    )
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
  os.fsync(fd)
  _HELD[workdir] = [fd, 1]
  try:
    yield path
  finally:
    del _HELD[workdir]
    # Emptied, not removed: removing would let a waiting process lock the
    # old file while a third creates and locks a new one.
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
