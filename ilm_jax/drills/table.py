"""One row per drill case family, and the table ``launch/drills.py`` prints.

Every drill (parser fuzzing, hostile weight files, kill -9 and resume,
damaged state files) reports a list of ``DrillRow``: how many cases it
tried and how each ended. ``outcomes`` counts outcome names; the names that
mean a defect are listed in ``DEFECTS`` so the command can fail on them.
"""

from __future__ import annotations

import collections
import dataclasses

# Outcomes that are defects wherever they appear.
DEFECTS = (
  "silently_accepted",  # malformed input read without an error
  "error_without_location",  # an error naming neither the file nor the line
  "crash_on_valid",  # well-formed input rejected or crashed
  "too_slow",  # over the drill's time limit
  "too_much_memory",  # over the drill's memory limit
  "results_differ",  # a resumed run reported other results
  "unrecovered",  # damage neither recovered from nor explained
)


@dataclasses.dataclass
class DrillRow:
  """The cases of one family and how they ended.

  Attributes:
    section: the drill (``fuzz``, ``weights``, ``kill``, ``damage``).
    case: the case family, e.g. ``interactions.csv: ids``.
    outcomes: outcome name -> number of cases, e.g.
      ``{"rejected_with_location": 812, "accepted_valid": 300}``.
  """

  section: str
  case: str
  outcomes: collections.Counter = dataclasses.field(
    default_factory=collections.Counter
  )

  @property
  def tried(self) -> int:
    return sum(self.outcomes.values())

  @property
  def defects(self) -> int:
    return sum(self.outcomes[name] for name in DEFECTS)


def format_table(rows: list[DrillRow]) -> str:
  """A fixed-width table: section, case, tried, defects, outcome counts."""
  header = ("section", "case", "tried", "defects", "outcomes")
  lines = []
  for row in rows:
    outcomes = ", ".join(
      f"{name} {count}" for name, count in sorted(row.outcomes.items())
    )
    lines.append(
      (row.section, row.case, str(row.tried), str(row.defects), outcomes)
    )
  widths = [
    max([len(header[i])] + [len(line[i]) for line in lines]) for i in range(4)
  ]
  out = [
    "  ".join(h.ljust(w) for h, w in zip(header[:4], widths)) + "  outcomes"
  ]
  out.append("-" * len(out[0]))
  for line in lines:
    out.append(
      "  ".join(v.ljust(w) for v, w in zip(line[:4], widths)) + "  " + line[4]
    )
  total = sum(r.tried for r in rows)
  defects = sum(r.defects for r in rows)
  out.append(f"total: {total} cases, {defects} defects")
  return "\n".join(out)
