"""Runs ``launch/train.py`` as one process of a multi-process test job.

Usage (by tests/test_multihost.py, one subprocess per process):
  python tests/multihost_worker.py WRITES_LOG -- <launch/train.py flags>

Every file this Python process opens for writing is appended to
``WRITES_LOG`` (one path a line), through an audit hook, so the test can
tell which process wrote what in the workdir they share. Files written by
native code (orbax's tensorstore shards) do not pass through the hook.
"""

import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _writes(mode, flags) -> bool:
  if isinstance(mode, str):
    return any(c in mode for c in "wax+")
  return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def main():
  log_path, sep, *train_args = sys.argv[1:]
  assert sep == "--", "usage: multihost_worker.py WRITES_LOG -- FLAGS"
  written = set()

  def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)):
      path, mode, flags = (list(args) + [None, None])[:3]
      if _writes(mode, flags):
        written.add(os.fsdecode(path))

  sys.addaudithook(hook)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, repo)
  sys.argv = ["launch/train.py", *train_args]
  try:
    script = os.path.join(repo, "launch", "train.py")
    runpy.run_path(script, run_name="__main__")
  except SystemExit as e:
    if e.code not in (0, None):
      raise
  finally:
    written.discard(log_path)
    with open(log_path, "w") as f:
      f.write("".join(f"{p}\n" for p in sorted(written)))


if __name__ == "__main__":
  main()
