"""The reliability drills: the fuzzer finds no defect, and would find one."""

import json
import random
import subprocess
import sys

from ilm_jax.data import fields
from ilm_jax.drills import fuzz, weights
from ilm_jax.drills.table import DEFECTS
from tests.conftest import REPO_ROOT


def _outcomes(rows):
  total = {}
  for row in rows:
    for name, count in row.outcomes.items():
      total[name] = total.get(name, 0) + count
  return total


def test_fuzz_drill_reports_no_defect():
  rows = fuzz.fuzz_drill(300, seed=3)
  outcomes = _outcomes(rows)
  assert sum(outcomes.values()) == 300
  assert not {k: v for k, v in outcomes.items() if k in DEFECTS}, outcomes
  # Both sides are exercised: malformed inputs and well-formed ones.
  assert outcomes["rejected_with_location"] > 100
  assert outcomes["accepted_valid"] > 60
  assert {r.case.split(":")[0] for r in rows} == {f.name for f in fuzz.FORMATS}


def test_fuzz_drill_catches_a_parser_that_guesses(monkeypatch):
  # A decimal-id parser that accepts anything, as int() once did.
  monkeypatch.setattr(fields, "decimal_id", lambda path, line, value, f: value)
  outcomes = _outcomes(fuzz.fuzz_drill(120, seed=3))
  assert outcomes.get("silently_accepted", 0) > 0


def test_weight_cases_end_as_expected(tmp_path):
  path = tmp_path / "valid.gguf"
  weights.write_gguf(path)
  data = path.read_bytes()
  cases = weights.gguf_cases(data, weights._gguf_layout(path), random.Random(0))
  picked = [cases[0], cases[1], cases[-21], cases[-1]]  # intact, cut, flips
  for case in picked:
    case.expected_sha256 = weights.hashlib.sha256(data).hexdigest()
  got = [
    weights.run_weight_case(c, tmp_path / f"c{i}") for i, c in enumerate(picked)
  ]
  assert got[0] == "accepted_valid"
  assert got[1] == "rejected_with_location"
  assert got[3] == "caught_by_checksum"  # tensor data flip: structurally fine
  assert got[2] in ("rejected_with_location", "caught_by_checksum")


def test_drills_command_help_and_a_small_run(tmp_path):
  command = [sys.executable, str(REPO_ROOT / "launch" / "drills.py")]
  # absl's --help exits with status 1 by design; the text is what counts.
  help_text = subprocess.run(
    command + ["--help"], capture_output=True, text=True
  ).stdout
  assert "--fuzz_cases" in help_text and "--sections" in help_text
  run = subprocess.run(
    command + ["--sections=fuzz", "--fuzz_cases=30", f"--workdir={tmp_path}"],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert "total: 30 cases, 0 defects" in run.stdout
  saved = json.loads((tmp_path / "drills.json").read_text())
  assert saved["total"] == 30 and saved["defects"] == 0
  assert (tmp_path / "drills.txt").read_text().startswith("section")
