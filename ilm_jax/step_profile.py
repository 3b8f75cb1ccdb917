"""Where a compiled step's wall time goes: matmuls, other ops, idle.

A benchmark's MFU says how far a step is from the machine's matmul peak, not
why. This module traces a few calls of a jitted function with
``jax.profiler``, reads the trace back (``jax.profiler.ProfileData``),
matches its events to the instructions of the compiled module by name, and
splits the calls' wall time into

* ``matmul``: at least one matmul runs (a dot or convolution, or a fusion
  or library call that computes one: XLA:CPU's YNNPACK / oneDNN fusions,
  GPU GEMM calls);
* ``other``: only other ops run (element-wise fusions, reductions,
  transposes, copies, gathers);
* ``idle``: no op of the module runs (the runtime between ops, threads
  handing work over, host dispatch between calls).

Busy time is further split by the op's scope: ``backward`` where JAX's name
stack marks the transposed (VJP) pass, ``forward`` otherwise, and a part
named by the caller's substring rules on the op's ``op_name`` (for stage 2:
the frozen LLM, the trainable encoder, the rest). With the step's model
FLOPs, ``matmul`` time gives the rate the matmuls themselves reach: the gap
between it and the MFU is the time spent outside matmuls.

Works on the CPU (events on XLA's worker threads) and on GPUs and TPUs
(events on the device's op lines); only events whose names are instructions
of the profiled module count, so nothing else should run meanwhile.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
from collections.abc import Callable, Sequence

import jax

MATMUL = "matmul"
OTHER = "other"
IDLE = "idle"
FORWARD = "forward"
BACKWARD = "backward"

# An instruction line of an HLO module's text: name, shape, opcode, rest.
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$", re.M
)
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$", re.M)
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL_OPS = ("dot", "convolution")
# Library calls that are matmuls (cuBLAS / cuBLASLt GEMMs, oneDNN).
_MATMUL_TARGETS = re.compile(
  r'custom_call_target="[^"]*(gemm|matmul|dot)', re.IGNORECASE
)


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One instruction of a compiled module.

  Attributes:
    opcode: e.g. "fusion", "dot", "copy".
    op_name: JAX's name stack of the op it came from ("" if none).
    matmul: whether it is or contains a matmul.
  """

  opcode: str
  op_name: str
  matmul: bool


def instructions(hlo_text: str) -> dict[str, Instruction]:
  """Instructions of a compiled module's text (``compiled.as_text()``).

  Fusions and calls count as matmuls when the computation they call does
  (directly or through nested calls).
  """
  bodies: dict[str, list[tuple[str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and " = " not in line.split("{")[0]:
      current = head.group(1)
      bodies[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, _, opcode, rest = m.groups()
      bodies[current].append((name, opcode, rest))

  memo: dict[str, bool] = {}

  def computes_matmul(computation: str) -> bool:
    if computation not in memo:
      memo[computation] = False  # provisional, while its body is read
      memo[computation] = any(
        _is_matmul(opcode, rest) for _, opcode, rest in bodies[computation]
      )
    return memo[computation]

  def _is_matmul(opcode: str, rest: str) -> bool:
    if opcode in _MATMUL_OPS:
      return True
    if opcode == "custom-call" and _MATMUL_TARGETS.search(rest):
      return True
    called = _CALLS.search(rest)
    return bool(called and called.group(1) in bodies) and computes_matmul(
      called.group(1)
    )

  out = {}
  for body in bodies.values():
    for name, opcode, rest in body:
      op_name = _OP_NAME.search(rest)
      out[name] = Instruction(
        opcode, op_name.group(1) if op_name else "", _is_matmul(opcode, rest)
      )
  return out


@dataclasses.dataclass(frozen=True)
class Event:
  """One op's execution: [start_ns, end_ns) of instruction ``name``."""

  start_ns: int
  end_ns: int
  name: str


def module_events(xspace_path: str, known: dict[str, Instruction]):
  """Events of a trace file whose names are instructions in ``known``."""
  data = jax.profiler.ProfileData.from_file(xspace_path)
  events = []
  for plane in data.planes:
    for line in plane.lines:
      for e in line.events:
        if e.name in known:
          events.append(
            Event(int(e.start_ns), int(e.start_ns + e.duration_ns), e.name)
          )
  return events


def scope(op_name: str, parts: Sequence[tuple[str, str]]) -> str:
  """ "forward <part>" or "backward <part>" of an op.

  Args:
    op_name: JAX's name stack of the op.
    parts: (label, substring) rules, the first whose substring occurs in
      ``op_name`` names the part; "rest" if none does.
  """
  direction = BACKWARD if "transpose(" in op_name else FORWARD
  part = next((label for label, s in parts if s in op_name), "rest")
  return f"{direction} {part}"


@dataclasses.dataclass(frozen=True)
class Breakdown:
  """Wall time of profiled calls, split by what ran.

  Attributes:
    calls: profiled calls.
    seconds: {(kind, scope): seconds per call}; kind one of MATMUL, OTHER,
      IDLE (scope "" for IDLE).
  """

  calls: int
  seconds: dict[tuple[str, str], float]

  @property
  def wall(self) -> float:
    """Seconds per call, from the first op's start to the last op's end."""
    return sum(self.seconds.values())

  def of_kind(self, kind: str) -> float:
    return sum(s for (k, _), s in self.seconds.items() if k == kind)

  def rows(self) -> list[dict]:
    """[{"kind", "scope", "seconds", "share"}], longest first."""
    wall = self.wall
    return [
      {"kind": k, "scope": s, "seconds": v, "share": v / wall if wall else 0}
      for (k, s), v in sorted(self.seconds.items(), key=lambda kv: -kv[1])
    ]


def breakdown(
  events: Sequence[Event],
  known: dict[str, Instruction],
  calls: int,
  parts: Sequence[tuple[str, str]] = (),
) -> Breakdown:
  """Splits the events' span into matmul / other / idle time.

  Sweeps the events in time order. While any matmul runs, the time is the
  matmul's (scoped by the earliest-started one running); else while any
  other op runs, that op's; else idle. Overlapping ops thus count once.

  Args:
    events: the module's events (``module_events``), from ``calls`` calls.
    known: the module's instructions.
    calls: how many calls the events cover (seconds are per call).
    parts: scope rules (``scope``).

  Returns:
    Breakdown.
  """
  if not events:
    raise ValueError(
      "the trace has no events of the profiled module: was it traced while "
      "it ran, and does the backend record op events?"
    )
  edges = []
  for i, e in enumerate(events):
    edges.append((e.start_ns, 1, i))
    edges.append((e.end_ns, -1, i))
  # Ends before starts at equal times: a handed-over op is not an overlap.
  edges.sort(key=lambda x: (x[0], x[1]))
  running: dict[int, Event] = {}
  total = collections.Counter()
  last = edges[0][0]
  for t, change, i in edges:
    if t > last:
      total[_state(running, known, parts)] += t - last
      last = t
    if change > 0:
      running[i] = events[i]
    else:
      running.pop(i, None)
  return Breakdown(calls, {k: v / 1e9 / calls for k, v in total.items()})


def _state(running, known, parts) -> tuple[str, str]:
  if not running:
    return IDLE, ""
  ordered = sorted(running.values(), key=lambda e: e.start_ns)
  matmuls = [e for e in ordered if known[e.name].matmul]
  first = (matmuls or ordered)[0]
  kind = MATMUL if matmuls else OTHER
  return kind, scope(known[first.name].op_name, parts)


def profile_calls(
  fn: Callable[[], object],
  hlo_text: str,
  calls: int,
  parts: Sequence[tuple[str, str]] = (),
  logdir: str | None = None,
) -> Breakdown:
  """Traces ``calls`` calls of an already compiled ``fn`` and splits them.

  Args:
    fn: runs one call (returns JAX arrays to wait for). Call it once before
      to compile, so that compilation stays out of the trace.
    hlo_text: the compiled module's text (``jitted.lower(...).compile()
      .as_text()``) of what ``fn`` runs.
    calls: calls to trace.
    parts: scope rules (``scope``).
    logdir: where the trace is written (default: a temporary folder).

  Returns:
    Breakdown.
  """
  known = instructions(hlo_text)
  logdir = logdir or tempfile.mkdtemp(prefix="step_profile")
  jax.profiler.start_trace(logdir)
  try:
    for _ in range(calls):
      jax.block_until_ready(fn())
  finally:
    jax.profiler.stop_trace()
  paths = sorted(
    glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
    key=os.path.getmtime,
  )
  if not paths:
    raise FileNotFoundError(f"{logdir}: the profiler wrote no *.xplane.pb")
  return breakdown(module_events(paths[-1], known), known, calls, parts)
