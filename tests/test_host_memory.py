"""Retaining freed host memory: the policy, and no page faults per step."""

import json
import os
import subprocess
import sys

import jax
import pytest

from ilm_jax import host_memory

# A training-like step: the gradient of a layer over 16,384 rows keeps its
# 64 MiB of activations for the backward pass in a temporary buffer that
# each call allocates and frees; the script prints the fewest minor page
# faults of eight calls after warm-up. With glibc's defaults every call
# faults its whole buffer in again. With memory retained most calls fault
# nothing on one CPU we run on, while on another (2-core AMD EPYC) calls
# alternate between none and a whole buffer: its two XLA threads free and
# take blocks in varying order, and a freed hole does not always fit.
_STEP = """
import json, resource, sys
from ilm_jax import host_memory
retained = host_memory.retain_freed_memory() if sys.argv[1] == "1" else False
import jax, jax.numpy as jnp
x = jnp.linspace(-1.0, 1.0, 16384 * 256).reshape(16384, 256)
w = jnp.full((256, 1024), 0.01)
loss = lambda w: jnp.sum(jnp.tanh(x @ w) ** 2)
step = jax.jit(jax.grad(loss))
for _ in range(3):
  step(w).block_until_ready()
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retained": retained, "faults": min(faults)}))
"""


def _faults(retain: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  out = subprocess.run(
    [sys.executable, "-c", _STEP, "1" if retain else "0"],
    capture_output=True,
    text=True,
    env=env,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
  not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)"
)
def test_retained_memory_spares_each_step_its_page_faults():
  released, retained = _faults(False), _faults(True)
  assert not released["retained"] and retained["retained"]
  # 64 MiB of fresh 4 KiB pages: ~16,000 faults a call under glibc's
  # defaults; with freed memory retained the pages are reused.
  assert released["faults"] > 8_000, released
  assert retained["faults"] < released["faults"] / 10, (released, retained)


def test_retaining_is_refused_once_jax_runs():
  jax.devices()  # this process's backend is up: its threads have arenas
  assert host_memory.retain_freed_memory() is False


@pytest.mark.parametrize(
  "choice, platforms, expected",
  [
    ("retain", "", True),
    ("release", "cpu", False),
    ("auto", "cpu", True),
    ("auto", "cuda,cpu", False),
    ("auto", "tpu", False),
  ],
)
def test_policy(monkeypatch, choice, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.wanted(choice) is expected


def test_auto_without_platforms_follows_installed_plugins(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(host_memory, "_ACCELERATOR_PLUGINS", ("json",))
  assert host_memory.wanted("auto") is False  # "json" is installed
  monkeypatch.setattr(host_memory, "_ACCELERATOR_PLUGINS", ("no_such_pkg",))
  assert host_memory.wanted("auto") is True


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match="'keep'"):
    host_memory.wanted("keep")
