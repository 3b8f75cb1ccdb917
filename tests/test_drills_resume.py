"""The kill and damage drills' mechanics, on a stand-in pipeline that takes
seconds (the real one runs in ``launch/drills.py``)."""

import json
import pathlib

from ilm_jax.drills import resume

# A pipeline stand-in: each stage writes what ``resume.stage_reached`` looks
# for, after a pause, and skips what an earlier run wrote; --config=forgetful
# forgets stage 1's result when resumed (a resume that loses something).
FAKE_TRAIN = """
import json, pathlib, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
w = pathlib.Path(args["workdir"])
fresh = not (w / "stage1" / "metrics.json").exists()
def stage(path, content):
  p = w / path
  if not p.exists():
    time.sleep(0.4)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(content))
stage("cf/cf_meta.json", {})
stage("eval/baselines.json", {})
stage("stage1/metrics.json", {"final": {"loss": 1.0}})
stage("stage2/metrics.json", {"final": {"loss": 2.0}})
time.sleep(0.4)
loss = 1.0 if fresh or args["config"] != "forgetful" else None
results = {"stage1": {"loss": loss}, "stage2": {"train_seconds": time.time()}}
(w / "results.json").write_text(json.dumps(results))
"""


def _launcher(tmp_path, config="small"):
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True, exist_ok=True)
  (repo / "launch" / "train.py").write_text(FAKE_TRAIN)
  return resume.Launcher(config_arg=config, repo=repo)


def test_kill_drill_kills_across_stages_and_compares_results(tmp_path):
  rows = resume.kill_drill(
    5, tmp_path / "kill", seed=3, launcher=_launcher(tmp_path)
  )
  assert sum(r.tried for r in rows) == 5
  assert all(set(r.outcomes) == {"identical"} for r in rows)
  report = json.loads((tmp_path / "kill" / "kill_drill.json").read_text())
  assert len({k["stage"] for k in report["kills"]}) >= 2
  assert not report["failures"]


def test_kill_drill_reports_a_resume_that_loses_results(tmp_path):
  rows = resume.kill_drill(
    4, tmp_path / "kill", seed=0, launcher=_launcher(tmp_path, "forgetful")
  )
  # The final comparison speaks for every kill before it.
  assert rows and all(r.outcomes == {"results_differ": r.tried} for r in rows)
  assert sum(r.defects for r in rows) == 4


def test_damage_drill_copies_damages_and_judges(tmp_path):
  launcher = _launcher(tmp_path)
  finished = tmp_path / "finished"
  resume._reference(launcher, finished)
  # The stand-in rewrites a half-written results.json: recovered.
  rows = resume.damage_drill(
    tmp_path / "damage",
    finished=finished,
    cases=["half-written results.json"],
    launcher=launcher,
  )
  assert [(r.case, dict(r.outcomes)) for r in rows] == [
    ("half-written results.json", {"recovered": 1})
  ]
  assert json.loads((finished / "results.json").read_text())  # untouched
  assert pathlib.Path(tmp_path / "damage" / "damage_drill.json").exists()
