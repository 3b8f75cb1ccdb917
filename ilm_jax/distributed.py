"""Joins the processes of a multi-host job, and says which one writes.

A TPU pod slice or a multi-GPU cluster runs one Python process per host;
they become one JAX runtime (one global mesh over every chip) through
``jax.distributed.initialize``, which must run before anything touches a
device. Entry points call ``initialize_from_flags`` first thing in ``main``
(``console.start`` does it). The job is multi-process when asked:

* ``--coordinator_address=host:port --num_processes=N --process_id=i``, or
  the same from the environment (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), as on a hand-made cluster or
  several processes on one machine;
* ``--distributed``: ``jax.distributed.initialize()`` with no arguments, so
  JAX finds the coordinator itself, as on a Cloud TPU VM pod slice (every
  worker runs the same command) or under SLURM / Open MPI.

Without either, nothing is initialised and the job is one process.

Every process computes, and all of them call the orbax checkpoint saves
(orbax writes each process's shards and lets the primary write metadata),
but files meant for people (metrics JSON, TensorBoard, tables, plots,
results) are written by process 0 only: ``is_primary`` is the one test the
writers use.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_COUNT = "JAX_NUM_PROCESSES"
_ENV_INDEX = "JAX_PROCESS_ID"


def define_flags() -> None:
  """Defines ``--distributed``, ``--coordinator_address``,
  ``--num_processes`` and ``--process_id`` (once), listed by the calling
  script's ``--help``."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-host job with jax.distributed.initialize() and JAX's "
    "own cluster detection (Cloud TPU VM pod slices, SLURM, Open MPI).",
  )
  flags.DEFINE_string(
    "coordinator_address",
    os.environ.get(_ENV_ADDRESS, ""),
    "host:port of process 0's coordinator service; with --num_processes "
    f"and --process_id joins a multi-process job (env {_ENV_ADDRESS}).",
  )
  flags.DEFINE_integer(
    "num_processes",
    int(os.environ.get(_ENV_COUNT, "0") or 0),
    f"Processes in the job (env {_ENV_COUNT}); 0 = JAX detects it.",
  )
  flags.DEFINE_integer(
    "process_id",
    int(os.environ.get(_ENV_INDEX, "-1") or -1),
    f"This process's index, 0 to N-1 (env {_ENV_INDEX}); -1 = JAX detects it.",
  )
  names = ("distributed", "coordinator_address", "num_processes", "process_id")
  for name in names:
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])


def initialize(
  coordinator_address: str = "",
  num_processes: int = 0,
  process_id: int = -1,
  auto: bool = False,
) -> bool:
  """Joins the multi-process job these arguments describe, if any.

  Args:
    coordinator_address: ``host:port`` of process 0; '' = none given.
    num_processes: processes in the job; 0 = let JAX detect it.
    process_id: this process's index; -1 = let JAX detect it.
    auto: initialise even without an address (JAX's cluster detection).

  Returns:
    Whether ``jax.distributed`` was initialised (now or before).

  Raises:
    ValueError: an address without a process count and index, or an index
      outside ``[0, num_processes)``; the message names the flags.
  """
  import jax  # Entry points only; parsing flags imports no JAX.

  if jax.distributed.is_initialized():
    return True
  if not (coordinator_address or auto):
    return False
  if coordinator_address and (num_processes < 1 or process_id < 0):
    raise ValueError(
      f"--coordinator_address={coordinator_address} needs --num_processes "
      "(>= 1) and --process_id (0 to num_processes - 1), or the "
      f"environment variables {_ENV_COUNT} and {_ENV_INDEX}"
    )
  if num_processes >= 1 and not 0 <= process_id < num_processes:
    raise ValueError(
      f"--process_id={process_id} is not one of the {num_processes} "
      "processes (0 to num_processes - 1)"
    )
  # Multi-process CPU jobs (tests, CPU clusters) need a collectives
  # backend; the setting only affects the CPU client, so TPU and GPU jobs
  # are untouched by it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address or None,
    num_processes=num_processes if num_processes >= 1 else None,
    process_id=process_id if process_id >= 0 else None,
  )
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def initialize_from_flags() -> bool:
  """``initialize`` with the flags of ``define_flags`` (when defined)."""
  if "coordinator_address" not in flags.FLAGS:
    return False
  f = flags.FLAGS
  return initialize(
    f.coordinator_address, f.num_processes, f.process_id, f.distributed
  )


def is_primary() -> bool:
  """Whether this process writes the job's human-facing files (process 0).

  True in a single-process job without importing or starting JAX's backend,
  so writers can ask it anywhere.
  """
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return True
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process of a multi-host job gets here (e.g. until
  process 0 has written a file the others read next); a no-op otherwise."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
