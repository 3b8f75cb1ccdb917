"""Keeping freed host memory mapped, so XLA:CPU steps stop page-faulting.

XLA's CPU runtime allocates each execution's temporary buffer (for a
stage-2 training step on SmolLM2, ~1.5 GB of saved activations) with
``malloc`` from its worker threads and frees it when the step ends. glibc
serves such blocks from fresh ``mmap`` regions and unmaps them on ``free``,
so every step touches ~390,000 new 4 KiB pages and pays a page fault (and
the kernel's zeroing) for each: about a sixth of the step on a 2-core CPU
(``launch/bench_stage2.py --profile`` shows it as slow element-wise ops).

``retain_freed_memory`` tells glibc (``mallopt``) to serve every thread
from one arena, never to use ``mmap`` for large blocks and never to return
freed memory to the system: after the first steps, the same pages are
reused and no step faults. The price is resident memory: the process keeps
its high-water mark (plus some fragmentation) instead of shrinking between
steps. It must run before JAX starts its threads (a thread keeps the arena
of its first allocation), so entry points call it first, through
``console.start``. Off glibc, or once JAX is initialised, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

RETAIN = "retain"
RELEASE = "release"
AUTO = "auto"
CHOICES = (AUTO, RETAIN, RELEASE)

# Packages whose presence means JAX will run on an accelerator, where host
# memory is not the step's working set and glibc's defaults stay.
_ACCELERATOR_PLUGINS = (
  "jax_cuda12_plugin",
  "jax_cuda13_plugin",
  "jax_rocm60_plugin",
  "jax_rocm7_plugin",
  "libtpu",
)


def wanted(choice: str) -> bool:
  """Whether ``choice`` (one of CHOICES) asks to retain freed memory.

  "auto" retains on CPU-only runs: JAX_PLATFORMS is "cpu", or it is unset
  and no accelerator plugin is installed.
  """
  if choice not in CHOICES:
    raise ValueError(f"host memory policy {choice!r}: one of {CHOICES}")
  if choice != AUTO:
    return choice == RETAIN
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory mapped for reuse (see module doc).

  Returns:
    True if the allocator was changed; False off glibc, or when JAX's
    backend is already running (its threads would keep their arenas).
  """
  if _jax_backend_started():
    return False
  name = ctypes.util.find_library("c")
  if not name:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False  # not glibc
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return all(
    mallopt(param, value) == 1
    for param, value in (
      (_M_ARENA_MAX, 1),
      (_M_MMAP_THRESHOLD, _INT_MAX),
      (_M_TRIM_THRESHOLD, _INT_MAX),
    )
  )


def _jax_backend_started() -> bool:
  xla_bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(xla_bridge is not None and getattr(xla_bridge, "_backends", {}))
