"""Kill -9 and damage drills of the whole pipeline, run as a user would.

``kill_drill`` runs the ``:small`` pipeline (``launch/train.py``) in a
subprocess, SIGKILLs it at random moments spread over its stages, restarts it
each time until it finishes, and compares its ``results.json`` with an
uninterrupted run's (timings aside). ``damage_drill`` damages copies of a
finished workdir (truncated or emptied checkpoints, half-written state files)
and checks that the pipeline either recovers with the same results or stops
with a message naming the damaged file and the way out.

Both return ``DrillRow``s (``ilm_jax.drills.table``). A reference run made
here is kept beside the drill's runs and reused while the code and the
config argument are unchanged (``drill_reference.json`` holds their digest).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from ilm_jax import files
from ilm_jax.drills.table import DrillRow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = "configs/default.py:small"
RESULTS = "results.json"
REFERENCE_FILE = "drill_reference.json"
# Progress of a pipeline workdir, in order; see ``stage_reached``.
STAGES = ("cf", "eval", "stage1", "stage2 train", "stage2 eval", "done")
# A kill moment that a resumed run finished before.
FINISHED_FIRST = "finished first"
# results.json keys that measure time, not results.
TIMING_SUFFIXES = ("seconds", "_time", "wall_s")


def without_timings(tree):
  """``tree`` (a JSON value) without keys that measure wall time."""
  if isinstance(tree, dict):
    return {
      k: without_timings(v)
      for k, v in tree.items()
      if not any(str(k).endswith(s) for s in TIMING_SUFFIXES)
    }
  if isinstance(tree, list):
    return [without_timings(v) for v in tree]
  return tree


def differences(a, b, prefix: str = "") -> list[str]:
  """Paths (``stage2.train.loss``) where two JSON values differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b), key=str):
      if k not in a or k not in b:
        out.append(f"{prefix}{k} (only in {'second' if k in b else 'first'})")
      else:
        out.extend(differences(a[k], b[k], f"{prefix}{k}."))
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
      out.extend(differences(x, y, f"{prefix}{i}."))
    return out
  return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]


def _final_written(metrics: pathlib.Path) -> bool:
  try:
    return bool(files.read_json(metrics).get("final"))
  except (OSError, ValueError, AttributeError):
    return False


def stage_reached(workdir: str | pathlib.Path) -> str:
  """The first stage of ``STAGES`` whose output ``workdir`` lacks."""
  w = pathlib.Path(workdir)
  if not (w / "cf" / "cf_meta.json").exists():
    return "cf"
  if not (w / "eval" / "baselines.json").exists():
    return "eval"
  if not _final_written(w / "stage1" / "metrics.json"):
    return "stage1"
  if not _final_written(w / "stage2" / "metrics.json"):
    return "stage2 train"
  try:
    done = "stage2" in files.read_json(w / RESULTS)
  except (OSError, ValueError, TypeError):
    done = False
  return "done" if done else "stage2 eval"


@dataclasses.dataclass
class Launcher:
  """How the drills start the pipeline.

  Attributes:
    config_arg: ``--config`` of ``launch/train.py``.
    repo: the source tree whose ``launch/train.py`` runs (a snapshot keeps a
      long drill safe from edits made meanwhile).
    python: the interpreter.
    extra: more flags for every run.
  """

  config_arg: str = SMALL
  repo: pathlib.Path = REPO_ROOT
  python: str = sys.executable
  extra: tuple[str, ...] = ()

  def start(self, workdir, stage: str = "all", log=None) -> subprocess.Popen:
    cmd = [
      self.python,
      str(pathlib.Path(self.repo) / "launch" / "train.py"),
      f"--config={self.config_arg}",
      f"--workdir={workdir}",
      f"--stage={stage}",
      *self.extra,
    ]
    env = dict(os.environ)
    # This tree's package first, ahead of any installed copy.
    env["PYTHONPATH"] = os.pathsep.join(
      [str(self.repo)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return subprocess.Popen(
      cmd,
      cwd=self.repo,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=log if log is not None else subprocess.DEVNULL,
      start_new_session=True,  # a kill takes its whole process group
    )

  def fingerprint(self) -> str:
    """Digest of the code and config argument a reference run depends on."""
    digest = hashlib.sha256(self.config_arg.encode())
    repo = pathlib.Path(self.repo)
    paths = sorted(
      p
      for p in repo.glob("ilm_jax/**/*.py")
      if "drills" not in p.relative_to(repo).parts  # they run, not train
    ) + sorted(repo.glob("configs/*.py"))
    for path in paths + [repo / "launch" / "train.py"]:
      digest.update(str(path.relative_to(repo)).encode())
      digest.update(path.read_bytes())
    return digest.hexdigest()


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


def _run_to_end(launcher, workdir, log_path, stage="all", poll=None) -> int:
  """Runs the pipeline on ``workdir``; returns its exit code. ``poll(t)`` is
  called every half second with the elapsed seconds (for timelines)."""
  with open(log_path, "ab") as log:
    proc = launcher.start(workdir, stage, log)
    start = time.monotonic()
    while proc.poll() is None:
      if poll is not None:
        poll(time.monotonic() - start)
      time.sleep(0.5)
  return proc.returncode


def _reference(launcher: Launcher, directory: pathlib.Path) -> dict:
  """An uninterrupted run's results and stage timeline, made or reused.

  Returns:
    {"results": results.json, "stages": {stage: seconds when the run
    reached it}, "seconds": wall seconds, "fingerprint": ...}.
  """
  saved = _current(launcher, directory)
  if saved:
    return saved
  fingerprint = launcher.fingerprint()
  shutil.rmtree(directory, ignore_errors=True)
  directory.mkdir(parents=True)
  stages: dict[str, float] = {}  # stage -> when the run reached it

  def poll(elapsed):
    stages.setdefault(stage_reached(directory), elapsed)

  start = time.monotonic()
  code = _run_to_end(
    launcher, directory, directory.parent / "reference.log", poll=poll
  )
  seconds = time.monotonic() - start
  if code != 0:
    raise RuntimeError(
      f"{directory}: the uninterrupted reference run failed (exit {code}); "
      f"see {directory.parent / 'reference.log'}"
    )
  saved = {
    "results": files.read_json(directory / RESULTS),
    "stages": stages,
    "seconds": seconds,
    "fingerprint": fingerprint,
  }
  files.write_json(directory / REFERENCE_FILE, saved)
  return saved


def _current(launcher: Launcher, directory: pathlib.Path) -> dict | None:
  """The reference record in ``directory`` if made by this code and config
  argument, else None."""
  record = directory / REFERENCE_FILE
  if not record.exists():
    return None
  try:
    saved = files.read_json(record)
  except ValueError:
    return None
  return saved if saved.get("fingerprint") == launcher.fingerprint() else None


def _kill_moments(reference: dict, points: int, rng: random.Random):
  """``points`` random moments of the reference run, as (stage, seconds into
  that stage), in pipeline order."""
  starts = sorted(reference["stages"].items(), key=lambda kv: kv[1])
  ends = [t for _, t in starts[1:]] + [reference["seconds"]]
  spans = [
    (stage, end - start)
    for (stage, start), end in zip(starts, ends)
    if stage != "done" and end > start
  ]
  total = sum(d for _, d in spans)
  moments = sorted(rng.uniform(0, total) for _ in range(points))
  out = []
  for t in moments:
    for stage, duration in spans:
      if t < duration:
        out.append((stage, t))
        break
      t -= duration
  return out


def _kill_round(launcher, killed, log_path, moments, progress):
  """One workdir killed at ``moments`` in turn, then run to the end.

  Returns:
    (kills: one dict per moment, failures, the differing fields of its final
    results.json from the reference's, timings aside)
  """
  shutil.rmtree(killed, ignore_errors=True)
  kills, failures = [], []
  for stage, offset in moments:
    with open(log_path, "ab") as log:
      proc = launcher.start(killed, "all", log)
      reached = None
      while proc.poll() is None:
        now = stage_reached(killed)
        if reached is None and STAGES.index(now) >= STAGES.index(stage):
          reached = time.monotonic()
        if reached is not None and time.monotonic() - reached >= offset:
          at = stage_reached(killed)
          _kill_group(proc)
          kills.append({"target": stage, "offset_s": offset, "stage": at})
          break
        time.sleep(0.2)
      else:
        if proc.returncode != 0:
          failures.append({"target": stage, "exit": proc.returncode})
        else:  # finished before the moment came: nothing was killed
          kills.append(
            {"target": stage, "offset_s": offset, "stage": FINISHED_FIRST}
          )
    if progress:
      progress(1)
  code = _run_to_end(launcher, killed, log_path)
  if progress:
    progress(1)
  if code != 0:
    failures.append({"target": "final run", "exit": code})
    return kills, failures, ["final run failed"]
  return kills, failures, None


def kill_drill(
  points: int = 20,
  workdir: str | pathlib.Path = "workdir/drills/kill",
  config_arg: str = SMALL,
  seed: int = 0,
  *,
  progress: Callable[[int], None] | None = None,
  launcher: Launcher | None = None,
  max_rounds: int = 3,
) -> list[DrillRow]:
  """SIGKILLs the pipeline at ``points`` random moments, resumes, compares.

  An uninterrupted reference run (``<workdir>/reference``, reused while the
  code and ``config_arg`` are unchanged) gives the results and how long each
  stage takes. Kill moments are drawn uniformly over its duration; each
  attempt on ``<workdir>/killed`` waits until that workdir has reached the
  moment's stage, waits the moment's offset into it, and sends SIGKILL to
  the whole process group. A last attempt runs to the end; its
  ``results.json`` is compared with the reference's, timings aside.

  A resumed run skips what it restored, so it can finish before a late
  moment comes; such moments kill nothing and are drawn again, in another
  round on a fresh ``<workdir>/killed_<round>``, until ``points`` kills have
  landed (at most ``max_rounds`` rounds).

  Args:
    points: how many kills.
    workdir: where the reference and the killed runs go.
    config_arg: ``--config`` of ``launch/train.py``.
    seed: draws the kill moments.
    progress: called with 1 after each attempt and after each last attempt.
    launcher: how to start the pipeline (default: this repository).
    max_rounds: rounds of kills at most.

  Returns:
    One row per stage that kills landed in (outcome ``identical`` or
    ``results_differ``, judged by the final run of that kill's round), a
    row of moments that killed nothing (``not_killed``) when rounds ran out
    before ``points`` kills landed, plus ``restart`` rows when an attempt
    failed on its own (``unrecovered``). Details (each kill's round, stage
    and time, the differing fields) go to ``<workdir>/kill_drill.json``.
  """
  launcher = launcher or Launcher(config_arg=config_arg)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  reference = _reference(launcher, workdir / "reference")
  log_path = workdir / "killed.log"
  log_path.unlink(missing_ok=True)
  rng = random.Random(seed)
  kills, failures, diffs = [], [], {}
  outcomes = collections.defaultdict(collections.Counter)
  landed, round_ = 0, 0
  while landed < points and round_ < max_rounds:
    round_ += 1
    name = "killed" if round_ == 1 else f"killed_{round_}"
    moments = _kill_moments(reference, points - landed, rng)
    got, failed, diff = _kill_round(
      launcher, workdir / name, log_path, moments, progress
    )
    if diff is None:
      diff = differences(
        without_timings(reference["results"]),
        without_timings(files.read_json(workdir / name / RESULTS)),
      )
    diffs[name] = diff[:50]
    outcome = "results_differ" if diff else "identical"
    for kill in got:
      kill["round"] = round_
      if kill["stage"] != FINISHED_FIRST:
        landed += 1
        outcomes[kill["stage"]][outcome] += 1
    kills += got
    failures += failed
  rows = []
  for stage in STAGES:
    if outcomes[stage]:
      case = "after results.json was written" if stage == "done" else stage
      rows.append(DrillRow("kill", f"kill -9 during {case}", outcomes[stage]))
  missing = points - landed
  if missing > 0:
    rows.append(
      DrillRow(
        "kill",
        "moments the run finished before (rounds ran out)",
        collections.Counter({"not_killed": missing}),
      )
    )
  if failures:
    rows.append(
      DrillRow(
        "kill",
        "restart after kill -9",
        collections.Counter({"unrecovered": len(failures)}),
      )
    )
  files.write_json(
    workdir / "kill_drill.json",
    {
      "reference_seconds": reference["seconds"],
      "reference_stages": reference["stages"],
      "points": points,
      "landed": landed,
      "rounds": round_,
      "kills": kills,
      "failures": failures,
      "differences": diffs,
      "log": str(log_path),
    },
  )
  return rows


# --- damage ----------------------------------------------------------------


def _newest_step(checkpoints: pathlib.Path) -> pathlib.Path:
  steps = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit()]
  if len(steps) < 2:
    raise RuntimeError(
      f"{checkpoints}: the damage drill needs two checkpoints (a newest to "
      "damage and an older one to fall back to)"
    )
  return max(steps, key=lambda p: int(p.name))


def _half(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _truncate_newest(stage: str):
  def damage(w: pathlib.Path) -> pathlib.Path:
    step = _newest_step(w / stage / "checkpoints")
    for f in (step / "state").rglob("*"):
      if f.is_file():
        _half(f)
    return step

  return damage


def _empty_newer_step(stage: str):
  def damage(w: pathlib.Path) -> pathlib.Path:
    step = _newest_step(w / stage / "checkpoints")
    newer = step.parent / str(int(step.name) + 1000)
    newer.mkdir()
    return newer

  return damage


def _empty_data_item(stage: str):
  def damage(w: pathlib.Path) -> pathlib.Path:
    item = _newest_step(w / stage / "checkpoints") / "data" / "metadata"
    item.write_bytes(b"")
    return item

  return damage


def _half_written(relative: str):
  def damage(w: pathlib.Path) -> pathlib.Path:
    _half(w / relative)
    return w / relative

  return damage


# name -> (damage(workdir) -> the damaged path, the stage run afterwards: the
# cheapest one that reads the damaged file and everything depending on it).
DAMAGE_CASES: dict[str, tuple[Callable, str]] = {
  "stage1: truncated newest checkpoint": (_truncate_newest("stage1"), "stage1"),
  "stage1: empty newer step directory": (_empty_newer_step("stage1"), "stage1"),
  "stage1: emptied data-iterator item": (_empty_data_item("stage1"), "stage1"),
  "stage2: truncated newest checkpoint": (_truncate_newest("stage2"), "stage2"),
  "stage2: empty newer step directory": (_empty_newer_step("stage2"), "stage2"),
  "stage2: emptied data-iterator item": (_empty_data_item("stage2"), "stage2"),
  "half-written results.json": (_half_written(RESULTS), "all"),
  "half-written cf/cf_meta.json": (_half_written("cf/cf_meta.json"), "stage1"),
  "half-written cf/cf_table.npy": (_half_written("cf/cf_table.npy"), "stage1"),
  "half-written stage1/metrics.json": (
    _half_written("stage1/metrics.json"),
    "stage1",
  ),
}
# Words of a message that says what to do.
WAY_OUT_WORDS = ("delete", "restore", "rerun", "--stage", "--workdir", "afresh")


def classify(
  code: int, log_tail: str, damaged: pathlib.Path, results, expected
) -> str:
  """How a run on a damaged workdir ended.

  Returns:
    ``recovered`` (exit 0, same results), ``results_differ`` (exit 0, other
    results), ``stopped_with_message`` (failed, naming the damaged file or
    its directory and a way out) or ``unrecovered`` (failed otherwise).
  """
  if code == 0:
    same = not differences(without_timings(expected), without_timings(results))
    return "recovered" if same else "results_differ"
  named = str(damaged) in log_tail or str(damaged.parent) in log_tail
  way_out = any(w in log_tail for w in WAY_OUT_WORDS)
  return "stopped_with_message" if named and way_out else "unrecovered"


def damage_drill(
  workdir: str | pathlib.Path = "workdir/drills/damage",
  config_arg: str = SMALL,
  *,
  finished: str | pathlib.Path | None = None,
  cases: Sequence[str] | None = None,
  progress: Callable[[int], None] | None = None,
  launcher: Launcher | None = None,
) -> list[DrillRow]:
  """Damages copies of a finished workdir; each must recover or explain.

  Args:
    workdir: where the copies (``<workdir>/<case>``) and logs go.
    config_arg: ``--config`` of ``launch/train.py``.
    finished: a finished workdir of ``config_arg`` to copy (default: made
      in ``<workdir>/reference``, reused while the code is unchanged).
    cases: names of ``DAMAGE_CASES`` to try (default: all).
    progress: called with 1 after each case.
    launcher: how to start the pipeline (default: this repository).

  Returns:
    One row per case with its outcome (see ``classify``). Each case's exit
    code and last log lines go to ``<workdir>/damage_drill.json``.
  """
  launcher = launcher or Launcher(config_arg=config_arg)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  if finished is None:
    # The kill drill's reference beside this one (launch/drills.py puts
    # them in <workdir>/kill and <workdir>/damage) serves when current.
    finished = workdir.parent / "kill" / "reference"
    if not _current(launcher, finished):
      finished = workdir / "reference"
    expected = _reference(launcher, finished)["results"]
  else:
    finished = pathlib.Path(finished).absolute()
    expected = files.read_json(finished / RESULTS)
  rows, details = [], {}
  for name in cases or list(DAMAGE_CASES):
    damage, stage = DAMAGE_CASES[name]
    copy = workdir / "".join(c if c.isalnum() else "_" for c in name)
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns(".lock"))
    (copy / REFERENCE_FILE).unlink(missing_ok=True)
    damaged = damage(copy).absolute()
    log_path = copy.with_suffix(".log")
    log_path.unlink(missing_ok=True)
    code = _run_to_end(launcher, copy.absolute(), log_path, stage)
    tail = log_path.read_text(errors="replace")[-6000:]
    try:
      results = files.read_json(copy / RESULTS)
    except (OSError, ValueError):
      results = None
    outcome = classify(code, tail, damaged, results, expected)
    rows.append(DrillRow("damage", name, collections.Counter({outcome: 1})))
    details[name] = {
      "damaged": str(damaged),
      "stage": stage,
      "exit": code,
      "outcome": outcome,
      "log_tail": tail[-1500:],
    }
    if progress:
      progress(1)
  files.write_json(workdir / "damage_drill.json", details)
  return rows
