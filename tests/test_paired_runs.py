"""Two runs compared user by user from their results files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ilm_jax.eval import metrics as M
from ilm_jax.eval import paired_runs
from tests.conftest import REPO_ROOT

MISS = 10**6
RERANK = "rerank:rerank:test:unseen:sasrec"
GENERATE = "generate:sequential:test:unseen"


def _results(path, users, ilm, retriever, generated=None):
  evaluations = {
    RERANK: {
      "kind": "rerank",
      "user_ranks": {"users": users, "ilm": ilm, "retriever": retriever},
    }
  }
  if generated is not None:
    evaluations[GENERATE] = {
      "kind": "generate",
      "user_ranks": {"users": users, "filtered": generated},
    }
  path.write_text(json.dumps({"evaluations": evaluations}))
  return path


def test_runs_compare_user_by_user(tmp_path):
  users = [0, 1, 2, 3]
  a = _results(tmp_path / "a.json", users, [0, 3, 12, MISS], [1, 3, 12, 0])
  b = _results(tmp_path / "b.json", users, [2, MISS, 12, MISS], [1, 3, 12, 0])
  out = paired_runs.compare(a, b, RERANK)
  # HR@5 and HR@10: A hits users 0 and 1, B user 0 only.
  assert out["users"] == 4
  assert out["HR@5"]["diff"] == pytest.approx(0.25)
  assert out["HR@10"]["diff"] == pytest.approx(0.25)
  d = np.array([1 / np.log2(2) - 1 / np.log2(4), 1 / np.log2(5), 0, 0])
  assert out["NDCG@5"]["diff"] == pytest.approx(d.mean())
  assert out["NDCG@5"]["se"] == pytest.approx(M.standard_error(d))
  # A's re-ranking against B's retriever order.
  vs = paired_runs.compare(a, b, RERANK, "ilm", "retriever")
  assert vs["HR@5"]["diff"] == pytest.approx(-0.25)  # B's retriever: 0, 1, 3


def test_missing_entries_ranks_and_other_users_are_named(tmp_path):
  a = _results(tmp_path / "a.json", [0, 1], [0, 1], [0, 1])
  b = _results(tmp_path / "b.json", [0, 2], [0, 1], [0, 1])
  with pytest.raises(ValueError, match="different users"):
    paired_runs.compare(a, b, RERANK)
  with pytest.raises(ValueError, match=f"{a}: no evaluation"):
    paired_runs.compare(a, a, GENERATE)
  with pytest.raises(ValueError, match="no 'filtered' ranks"):
    paired_runs.compare(a, a, RERANK, "filtered")
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"evaluations": {RERANK: {"kind": "rerank"}}}))
  with pytest.raises(ValueError, match="no per-user ranks"):
    paired_runs.compare(old, old, RERANK)


def test_command_prints_and_writes_the_comparison(tmp_path):
  users = list(range(6))
  a = _results(tmp_path / "a.json", users, [0] * 6, [0] * 6, [0, 0, 0, 9, 9, 9])
  b = _results(tmp_path / "b.json", users, [0] * 6, [0] * 6, [MISS] * 6)
  out = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "compare_runs.py"),
      f"--a={a}",
      f"--b={b}",
      f"--out={tmp_path / 'paired.json'}",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "over 6 users" in out.stdout
  assert "HR@10: +1.0000 ± 0.0000" in out.stdout
  saved = json.loads((tmp_path / "paired.json").read_text())
  assert saved["users"] == 6 and saved["HR@5"]["diff"] == pytest.approx(0.5)
