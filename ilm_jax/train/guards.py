"""What stops a training run before it saves or reports something wrong.

Four guards the loop runs: a non-finite loss or gradient stops training
(``check_finite_metrics``); parameters are checked finite before every
checkpoint, since a finite loss does not guarantee them (``save_checked``);
a checkpoint is resumed from only with finite parameters and a data position
its iterator accepts (``check_resumable``); and a run resumed under other
settings or inputs than its checkpoints were trained with is refused, or
restarted when asked (``resolve_changed_inputs``).
Each message says which checkpoint is kept and how to go on.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.train import provenance as provenance_lib


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; the run stopped before saving."""


def check_finite_metrics(step: int, metrics: dict, manager) -> None:
  bad = {
    k: float(metrics[k])
    for k in ("loss", "grad_norm")
    if not np.isfinite(float(metrics[k]))
  }
  if bad:
    manager.wait_until_finished()
    last = manager.latest_step()
    kept = f"step {last}" if last is not None else "none saved yet"
    raise NonFiniteLossError(
      f"non-finite {bad} at step {step}; training stopped without saving "
      f"this state. Last good checkpoint: {kept} in {manager.directory}. "
      "Lower the learning rate or check the inputs, then rerun to resume."
    )


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jax.tree.reduce(
    jnp.logical_and,
    jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
    jnp.array(True),
  )


def save_checked(manager, step, state, data, run_config, force=False):
  """Saves a checkpoint the policy (or ``force``) asks for, once its params
  are known finite: a finite loss does not guarantee finite params (a NaN
  learning rate turns them all NaN after the update), and a NaN checkpoint
  would be resumed from and evaluated as if it were a model."""
  if not (force or manager.should_save(step)):
    return
  if not bool(_all_finite(state.params)):
    manager.wait_until_finished()
    last = manager.latest_step()
    kept = f"step {last}" if last is not None else "none saved yet"
    raise NonFiniteLossError(
      f"non-finite parameters after step {step}; not saved. Last good "
      f"checkpoint: {kept} in {manager.directory}. Lower the learning rate "
      "or check the inputs, then rerun to resume."
    )
  ckpt.save(manager, step, state, data.get_state(), run_config, force=force)


def check_resumable(state, data, data_state: dict) -> None:
  """Raises ValueError unless a restored checkpoint can be resumed from:
  finite params, and a data position the iterator accepts (which it then
  holds)."""
  if not bool(_all_finite(state.params)):
    raise ValueError("non-finite parameters")
  try:
    data.set_state(data_state)
  except Exception as e:  # noqa: BLE001 - any refusal makes the step unusable
    raise ValueError(f"data-iterator position refused ({e!r})") from e


def resolve_changed_inputs(manager, log, workdir, provenance, config, desc):
  """Stops (or, if asked, starts afresh) when the checkpoints in ``workdir``
  were trained under other settings or inputs than ``provenance``."""
  changed = provenance_lib.check(workdir, provenance)
  if not changed:
    return
  if not config.restart_if_changed:
    raise provenance_lib.ProvenanceError(
      f"{workdir}: its checkpoints were trained with other settings or "
      "inputs; resuming would report that model under this config:\n  "
      + "\n  ".join(changed)
      + f"\nRestore them, use another workdir, or pass "
      f"--config.{desc}.train.restart_if_changed=True to discard these "
      "checkpoints and train afresh."
    )
  logging.warning(
    "%s: inputs changed (%s); discarding its checkpoints", desc, changed
  )
  manager.wait_until_finished()
  for step in manager.all_steps():
    manager.delete(step)
  log.truncate(0)
  log.history["final"] = {}
