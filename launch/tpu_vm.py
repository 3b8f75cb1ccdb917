r"""Runs the main job on a Cloud TPU VM or pod slice with ``gcloud``.

Steps, each one ``gcloud`` (or ``git``) command printed before it runs:

1. create the TPU VM (``--accelerator_type``, ``--version``) unless one of
   that name already exists in the zone, which is reused;
2. pack the repository's committed tree (``git archive HEAD``) and copy it
   to every worker (``scp --worker=all``), unpack it and run
   ``launch/setup.sh --tpu`` there;
3. run ``launch/train.py`` on every worker at once (``ssh --worker=all``)
   with ``--distributed``, so the workers join one ``jax.distributed`` job
   over the slice's global mesh; its output streams here (and to
   ``--log_file``);
4. delete the VM when ``--delete`` is given (also after a failed run).

``--dry_run`` prints every command without running any. A pod slice's
workers share no disk: ``--workdir`` must be a directory they all see,
such as a gcsfuse mount of a bucket at the same path on every worker, or
the bucket itself (``gs://bucket/run``: the stages keep it remote, checked
on a fake bucket only; see the README), so checkpoints and results land in
one place (worker 0 writes the results; every worker writes its checkpoint
shards).

Examples:
  # what would run on a v5e-32 pod slice
  python launch/tpu_vm.py --name=ilm --zone=us-west4-a \
      --accelerator_type=v5litepod-32 --workdir=/mnt/bucket/ilm \
      --config=configs/ml1m.py:full --delete --dry_run
  # a single-host v5e-8, reused if it exists, kept afterwards
  python launch/tpu_vm.py --name=ilm8 --zone=us-west4-a \
      --accelerator_type=v5litepod-8 --workdir=workdir/ilm8
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
REMOTE_DIR = "ilm_jax"

_NAME = flags.DEFINE_string("name", None, "TPU VM name.", required=True)
_ZONE = flags.DEFINE_string("zone", None, "GCP zone.", required=True)
_PROJECT = flags.DEFINE_string(
  "project", "", "GCP project ('' = gcloud's configured project)."
)
_ACCELERATOR = flags.DEFINE_string(
  "accelerator_type",
  "v5litepod-8",
  "TPU type: v5litepod-8 (one host), v5litepod-32 (8 hosts), v4-8 ...",
)
_VERSION = flags.DEFINE_string(
  "version",
  "v2-alpha-tpuv5-lite",
  "TPU VM runtime (software) version matching the accelerator type.",
)
_SPOT = flags.DEFINE_bool("spot", False, "Create a Spot (preemptible) VM.")
_CONFIG = flags.DEFINE_string(
  "config", "configs/default.py", "--config of launch/train.py."
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "--workdir of launch/train.py; on a multi-host slice a directory every "
  "worker shares (e.g. a gcsfuse mount).",
  required=True,
)
_TRAIN_ARGS = flags.DEFINE_multi_string(
  "train_arg",
  [],
  "Extra flag for launch/train.py, e.g. --train_arg=--stage=stage2 "
  "(repeat for more).",
)
_SKIP_SETUP = flags.DEFINE_bool(
  "skip_setup",
  False,
  "Do not copy and install the project (the workers already have it).",
)
_DELETE = flags.DEFINE_bool(
  "delete", False, "Delete the TPU VM when the job ends (or fails)."
)
_LOG_FILE = flags.DEFINE_string(
  "log_file", "", "Also append the job's streamed output here."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print every command; run none.")


def _gcloud(verb: str, *args: str, positional=()) -> list[str]:
  """``gcloud compute tpus tpu-vm VERB NAME --zone=Z [--project=P] ...``
  (``positional`` replaces NAME, as scp's source and destination do)."""
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb]
  cmd += list(positional) or [_NAME.value]
  cmd += [f"--zone={_ZONE.value}"]
  if _PROJECT.value:
    cmd += [f"--project={_PROJECT.value}"]
  return cmd + list(args)


def _ssh_all(command: str) -> list[str]:
  return _gcloud("ssh", "--worker=all", f"--command={command}")


def describe_command() -> list[str]:
  return _gcloud("describe", "--format=value(state)")


def create_command() -> list[str]:
  args = [
    f"--accelerator-type={_ACCELERATOR.value}",
    f"--version={_VERSION.value}",
  ]
  if _SPOT.value:
    args.append("--spot")
  return _gcloud("create", *args)


def tarball() -> str:
  return f"/tmp/ilm_jax-{_NAME.value}.tar.gz"


def install_commands() -> list[list[str]]:
  """Pack the committed tree, copy it to every worker, unpack, set up."""
  name = pathlib.Path(tarball()).name
  unpack = (
    f"mkdir -p {REMOTE_DIR} && tar -xzf {name} -C {REMOTE_DIR} && "
    f"cd {REMOTE_DIR} && bash launch/setup.sh --tpu"
  )
  return [
    ["git", "-C", ".", "archive", "--format=tar.gz", "-o", tarball(), "HEAD"],
    _gcloud("scp", "--worker=all", positional=(tarball(), f"{_NAME.value}:~/")),
    _ssh_all(unpack),
  ]


def train_command() -> list[str]:
  flags_ = [
    f"--config={_CONFIG.value}",
    f"--workdir={_WORKDIR.value}",
    "--distributed",
    *_TRAIN_ARGS.value,
  ]
  remote = f"cd {REMOTE_DIR} && .venv/bin/python launch/train.py " + " ".join(
    shlex.quote(f) for f in flags_
  )
  return _ssh_all(remote)


def delete_command() -> list[str]:
  return _gcloud("delete", "--quiet")


def _show(cmd: list[str]) -> None:
  print("+ " + shlex.join(cmd), flush=True)


def _run(cmd: list[str], log=None) -> int:
  """Runs ``cmd``, its output streamed here (and to ``log``)."""
  _show(cmd)
  if _DRY_RUN.value:
    return 0
  if log is None:
    return subprocess.call(cmd, cwd=REPO)
  with subprocess.Popen(
    cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  ) as proc:
    for line in proc.stdout:
      sys.stdout.write(line)
      log.write(line)
      log.flush()
  return proc.returncode


def _exists() -> bool:
  """Whether the VM exists (a dry run assumes it does not)."""
  _show(describe_command())
  if _DRY_RUN.value:
    print("# (dry run: assuming no such TPU VM, so it is created)")
    return False
  found = subprocess.run(
    describe_command(), capture_output=True, text=True, check=False
  )
  return found.returncode == 0 and bool(found.stdout.strip())


def _check(rc: int, what: str) -> None:
  if rc:
    raise RuntimeError(f"{what} failed (exit status {rc}); see above")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  log = None
  if _LOG_FILE.value and not _DRY_RUN.value:
    log = open(_LOG_FILE.value, "a")  # noqa: SIM115
  try:
    if _exists():
      print(f"# reusing TPU VM {_NAME.value}")
    else:
      _check(_run(create_command()), "creating the TPU VM")
    if not _SKIP_SETUP.value:
      for cmd in install_commands():
        _check(_run(cmd), "installing the project")
    _check(_run(train_command(), log), "the training job")
  finally:
    if _DELETE.value:
      _run(delete_command())
    if log is not None:
      log.close()


if __name__ == "__main__":
  app.run(main)
