"""One run per workdir: a second one stops at once, a dead one's lock is
taken over."""

import logging
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

from ilm_jax import workdir_lock
from ilm_jax.experiment_config import base_config
from ilm_jax.pipeline import run as pipeline

# Holds the lock of argv[1] and says so, then sleeps until killed.
_HOLDER = """
import sys, time
from ilm_jax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def _hold_in_subprocess(workdir):
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(workdir)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=REPO_ROOT,
  )
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_run_fails_at_once_naming_lock_file_and_pid(tmp_path):
  proc = _hold_in_subprocess(tmp_path)
  try:
    start = time.perf_counter()
    with pytest.raises(workdir_lock.WorkdirLockedError) as e:
      pipeline.run(base_config(), tmp_path, "cf")
    assert time.perf_counter() - start < 5
    message = str(e.value)
    assert str(tmp_path.resolve() / workdir_lock.LOCK_FILE) in message
    assert f"PID {proc.pid}" in message
    assert "--workdir" in message
    assert not (tmp_path / "config.json").exists()  # nothing written
  finally:
    proc.kill()
    proc.wait()


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  proc = _hold_in_subprocess(tmp_path)
  proc.kill()  # SIGKILL: no clean-up, the PID stays in the lock file
  proc.wait()
  assert f"PID {proc.pid}" in (tmp_path / workdir_lock.LOCK_FILE).read_text()
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(tmp_path) as path:
      assert f"PID {os.getpid()}" in path.read_text()
  assert "stale lock" in caplog.text and f"PID {proc.pid}" in caplog.text
  # Released cleanly: the next holder has nothing to warn about.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(tmp_path):
      pass
  assert "stale" not in caplog.text


def test_lock_is_reentrant_within_a_process(tmp_path):
  with workdir_lock.hold(tmp_path):
    with workdir_lock.hold(tmp_path / "." / ""):
      pass
    # Still held by the outer block: another process is refused.
    out = subprocess.run(
      [sys.executable, "-c", _HOLDER, str(tmp_path)],
      capture_output=True,
      text=True,
      timeout=60,
      cwd=REPO_ROOT,
    )
    assert out.returncode != 0 and "WorkdirLockedError" in out.stderr
