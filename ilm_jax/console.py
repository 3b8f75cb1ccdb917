"""What an entry point prints: progress bars and results, not library chatter.

Orbax, JAX and our own modules log through absl at INFO; a checkpoint save
alone prints a dozen lines, which scrolls the progress bars away. Entry
points call ``quiet_by_default`` first thing in ``main``: library logs then
show at WARNING and above, unless the user asks for more with absl's own
``--verbosity=0`` (or ``-v 0``; higher values add debug levels).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

from ilm_jax import distributed, host_memory


def quiet_by_default() -> None:
  """WARNING-level logging unless --verbosity was given on the command line."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def define_compilation_cache() -> flags.FlagHolder:
  """The ``--compilation_cache`` flag of entry points that compile a lot,
  listed by the calling script's ``--help``."""
  holder = flags.DEFINE_string(
    "compilation_cache",
    str(pathlib.Path.home() / ".cache" / "ilm_jax" / "xla"),
    "Persistent XLA compilation cache directory, so a resumed or repeated "
    "run skips recompiling; '' disables it.",
  )
  # --help lists the main script's flags; this one belongs there too.
  flags.FLAGS.register_flag_by_module(
    sys.argv[0], flags.FLAGS["compilation_cache"]
  )
  return holder


def define_host_memory() -> flags.FlagHolder:
  """The ``--host_memory`` flag of entry points that train or time XLA
  steps (``ilm_jax.host_memory``), listed by the calling script's
  ``--help``."""
  holder = flags.DEFINE_enum(
    "host_memory",
    host_memory.AUTO,
    host_memory.CHOICES,
    "Freed host memory: 'retain' keeps it mapped for the next step (no "
    "page faults on XLA:CPU's per-step buffers; the process keeps its peak "
    "resident size), 'release' leaves glibc's defaults, 'auto' retains on "
    "CPU-only runs.",
  )
  flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS["host_memory"])
  return holder


def start(
  argv, compilation_cache: str = "", memory_policy: str = host_memory.RELEASE
) -> None:
  """The first lines of every entry point's ``main``: no stray arguments,
  quiet library logs, the host-memory policy (``define_host_memory``, before
  JAX starts its threads), the multi-host job joined when its flags ask
  (``distributed.define_flags``), and the compilation cache when one is
  given."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_by_default()
  if host_memory.wanted(memory_policy):
    retained = host_memory.retain_freed_memory()
    logging.info("host memory: freed blocks retained: %s", retained)
  # Before anything touches a device: jax.distributed must come first.
  distributed.initialize_from_flags()
  if compilation_cache:
    import jax  # Only entry points that compile get here.

    jax.config.update("jax_compilation_cache_dir", compilation_cache)
