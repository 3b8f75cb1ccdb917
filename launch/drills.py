r"""Reliability drills: fuzzed parsers, hostile weight files, kill -9, damage.

Runs the drill sections and prints one table of the cases tried and how each
ended; exits non-zero when any case ended in a defect (silent acceptance of
malformed input, an error naming no file or line, a crash on well-formed
input, a case over its time or memory limit, a resumed run reporting other
results, damage neither recovered from nor explained). The table and a JSON
copy are written to --workdir as drills.txt and drills.json.

Sections:
  fuzz     malformed and well-formed variants of every text format the data
           parsers read (ilm_jax/drills/fuzz.py)
  weights  truncated, hostile and bit-flipped GGUF and safetensors files
           (ilm_jax/drills/weights.py)
  kill     kill -9 at random points of the :small run, then resume
  damage   damaged checkpoints and state files (both ilm_jax/drills/resume.py)

Examples:
  # everything, as delivered
  python launch/drills.py --workdir=/tmp/drills
  # the parser fuzzer only, a quick run
  python launch/drills.py --sections=fuzz --fuzz_cases=1000 --workdir=/tmp/d
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

from absl import app, flags

from ilm_jax import console, files
from ilm_jax.drills.table import DrillRow, format_table

SECTIONS = ("fuzz", "weights", "kill", "damage")

_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/drills", "Where drills.txt and drills.json are written."
)
_SECTIONS = flags.DEFINE_list(
  "sections",
  list(SECTIONS),
  f"Drill sections to run, any of {list(SECTIONS)}.",
)
_FUZZ_CASES = flags.DEFINE_integer(
  "fuzz_cases", 10_000, "How many fuzzed parser inputs to try.", lower_bound=1
)
_KILL_POINTS = flags.DEFINE_integer(
  "kill_points",
  20,
  "How many random moments of the :small run the kill section SIGKILLs.",
  lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "Changes every generated case.")


def _progress(description: str, total: int | None = None):
  """A tqdm bar and the callable(n) that the drills advance it with."""
  from tqdm import tqdm

  bar = tqdm(total=total, desc=description, unit="case", file=sys.stderr)
  return bar, bar.update


def _fuzz(workdir: str) -> list[DrillRow]:
  del workdir
  from ilm_jax.drills import fuzz

  bar, step = _progress("fuzz", _FUZZ_CASES.value)
  with bar:
    return fuzz.fuzz_drill(_FUZZ_CASES.value, _SEED.value, progress=step)


def _weights(workdir: str) -> list[DrillRow]:
  del workdir
  from ilm_jax.drills import weights

  bar, step = _progress("weights")
  with bar:
    return weights.weights_drill(_SEED.value, progress=step)


def _resume_section(name: str, workdir: str) -> list[DrillRow] | None:
  """Runs ``ilm_jax.drills.resume.<name>_drill``, or None when absent."""
  try:
    resume = importlib.import_module("ilm_jax.drills.resume")
  except ImportError as e:
    print(f"{name}: unavailable (ilm_jax.drills.resume: {e})")
    return None
  drill = getattr(resume, f"{name}_drill", None)
  if drill is None:
    print(f"{name}: unavailable (ilm_jax.drills.resume has no {name}_drill)")
    return None
  # Pass what the drill takes of these (its signature is its own).
  bar, step = _progress(name)
  offered = {
    "workdir": os.path.join(workdir, name),
    "points": _KILL_POINTS.value,
    "seed": _SEED.value,
    "progress": step,
  }
  accepted = inspect.signature(drill).parameters
  with bar:
    return drill(**{k: v for k, v in offered.items() if k in accepted})


_RUNNERS = {
  "fuzz": _fuzz,
  "weights": _weights,
  "kill": lambda workdir: _resume_section("kill", workdir),
  "damage": lambda workdir: _resume_section("damage", workdir),
}


def main(argv):
  console.start(argv)
  unknown = sorted(set(_SECTIONS.value) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"unknown --sections {unknown}; known: {SECTIONS}")
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  rows: list[DrillRow] = []
  unavailable = []
  for section in SECTIONS:
    if section not in _SECTIONS.value:
      continue
    got = _RUNNERS[section](workdir)
    if got is None:
      unavailable.append(section)
    else:
      rows.extend(got)
  table = format_table(rows)
  if unavailable:
    table += f"\nunavailable sections: {', '.join(unavailable)}"
  print(table)
  files.write_text(os.path.join(workdir, "drills.txt"), table + "\n")
  files.write_json(
    os.path.join(workdir, "drills.json"),
    {
      "rows": [
        {
          "section": r.section,
          "case": r.case,
          "tried": r.tried,
          "defects": r.defects,
          "outcomes": dict(sorted(r.outcomes.items())),
        }
        for r in rows
      ],
      "total": sum(r.tried for r in rows),
      "defects": sum(r.defects for r in rows),
      "unavailable": unavailable,
      "flags": {
        "sections": _SECTIONS.value,
        "fuzz_cases": _FUZZ_CASES.value,
        "kill_points": _KILL_POINTS.value,
        "seed": _SEED.value,
      },
    },
  )
  defects = sum(r.defects for r in rows)
  if defects:
    print(f"{defects} defects: see the rows with defects above")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
