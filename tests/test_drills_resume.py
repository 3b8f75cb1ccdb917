"""The kill and damage drills' mechanics, on a stand-in pipeline that takes
seconds (the real one runs in ``launch/drills.py``)."""

import json
import pathlib

from ilm_jax.drills import resume

# A pipeline stand-in: each stage writes what ``resume.stage_reached`` looks
# for, after a pause, and skips what an earlier run wrote; --config=forgetful
# forgets stage 1's result when resumed (a resume that loses something);
# --config=fast_resume does no work at all once resumed (a restart that
# finishes before later kill moments come).
FAKE_TRAIN = """
import json, pathlib, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
w = pathlib.Path(args["workdir"])
fresh = not (w / "stage1" / "metrics.json").exists()
pause = 0.4
if args["config"] == "fast_resume" and (w / "cf" / "cf_meta.json").exists():
  pause = 0.0
def stage(path, content):
  p = w / path
  if not p.exists():
    time.sleep(pause)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(content))
stage("cf/cf_meta.json", {})
stage("eval/baselines.json", {})
stage("stage1/metrics.json", {"final": {"loss": 1.0}})
stage("stage2/metrics.json", {"final": {"loss": 2.0}})
time.sleep(pause)
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


def test_kill_drill_draws_again_until_every_kill_has_landed(tmp_path):
  """A restart that finishes before the later moments come kills nothing
  there: those moments are drawn again on a fresh workdir, so the drill
  still reports ``points`` real kills."""
  launcher = _launcher(tmp_path, "fast_resume")
  rows = resume.kill_drill(3, tmp_path / "kill", seed=0, launcher=launcher)
  report = json.loads((tmp_path / "kill" / "kill_drill.json").read_text())
  assert report["landed"] == 3 and report["rounds"] >= 2
  assert any(k["stage"] == resume.FINISHED_FIRST for k in report["kills"])
  assert sum(r.tried for r in rows) == 3
  assert all(set(r.outcomes) == {"identical"} for r in rows)
  assert (tmp_path / "kill" / "killed_2" / "results.json").exists()

  # Out of rounds: the moments that never killed are reported as such.
  rows = resume.kill_drill(
    3, tmp_path / "once", seed=0, launcher=launcher, max_rounds=1
  )
  not_killed = [r for r in rows if "not_killed" in r.outcomes]
  assert len(not_killed) == 1 and not_killed[0].defects == 0
  assert sum(r.tried for r in rows) == 3


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
