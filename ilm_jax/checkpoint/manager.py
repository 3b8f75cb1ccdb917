"""Orbax checkpoints of a training run: state, data position and config.

One checkpoint per saved step holds three items:

* ``state``: the train state (params, optimiser state, step), restored into
  abstract arrays that carry their shardings, so a run resumes sharded;
* ``data``: the data iterator's position (JSON), so a resumed run sees the
  batches it would have seen;
* ``config``: the run's config (JSON), for provenance.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from ilm_jax import files

STATE = "state"
DATA = "data"
CONFIG = "config"


def make_manager(
  directory: str | pathlib.Path, save_every: int, keep: int
) -> ocp.CheckpointManager:
  """A CheckpointManager saving every ``save_every`` steps, keeping ``keep``.

  Args:
    directory: where step directories go (created if needed).
    save_every: FixedIntervalPolicy interval (>= 1).
    keep: LatestN: how many recent checkpoints survive (>= 1).
  """
  if save_every < 1 or keep < 1:
    raise ValueError(
      f"checkpoint_every ({save_every}) and keep_checkpoints ({keep}) must "
      "be >= 1"
    )
  directory = files.path(directory, absolute=True)
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_every),
    preservation_policy=checkpoint_managers.LatestN(keep),
    create=True,
  )
  return ocp.CheckpointManager(
    directory, item_names=(STATE, DATA, CONFIG), options=options
  )


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  data_state: dict,
  config: dict,
  force: bool = False,
) -> bool:
  """Saves if the policy says so (or ``force``); returns whether it did."""
  return manager.save(
    step,
    args=ocp.args.Composite(
      **{
        STATE: ocp.args.StandardSave(state),
        DATA: ocp.args.JsonSave(data_state),
        CONFIG: ocp.args.JsonSave(config),
      }
    ),
    force=force,
  )


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    tree,
  )


class NoUsableCheckpointError(RuntimeError):
  """Every checkpoint in a directory is damaged (none can be resumed from)."""


# A damaged checkpoint is moved here (beside the checkpoint directory), out
# of the manager's sight: kept for inspection, and no longer in the way of
# the step the resumed run will save again.
DAMAGED_DIR = "damaged_checkpoints"


def restore(
  manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict, dict]:
  """Restores (state, data position, config) of ``step`` (default: latest).

  Args:
    manager: the run's manager.
    abstract_state: the state's structure as ShapeDtypeStructs with
      shardings (see ``abstract_like``); arrays come back sharded so.
    step: which step; None = latest.

  Raises:
    FileNotFoundError: no checkpoint in the manager's directory.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{manager.directory}: no checkpoint to restore")
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      **{
        STATE: ocp.args.StandardRestore(abstract_state),
        DATA: ocp.args.JsonRestore(),
        CONFIG: ocp.args.JsonRestore(),
      }
    ),
  )
  return restored[STATE], restored[DATA], restored[CONFIG]


def _set_aside(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  """Moves step ``step``'s directory to ``DAMAGED_DIR``; returns where."""
  directory = files.path(manager.directory)
  target = directory.parent / DAMAGED_DIR / str(step)
  suffix = 0
  while target.exists():
    suffix += 1
    target = directory.parent / DAMAGED_DIR / f"{step}.{suffix}"
  target.parent.mkdir(parents=True, exist_ok=True)
  (directory / str(step)).rename(target)
  return target


def restore_newest_usable(
  manager: ocp.CheckpointManager,
  abstract_state: Any,
  check: Callable[[Any, dict], None],
) -> tuple[Any, dict, dict, int]:
  """Restores the newest checkpoint that loads and passes ``check``.

  Steps are tried newest first. One that fails to load (truncated files, an
  empty step directory, a damaged data or config item) or that ``check``
  rejects (non-finite params, a data position the iterator refuses) is
  logged with the reason and the next older one is tried. Once one is
  usable, the damaged newer ones are moved to ``DAMAGED_DIR`` beside the
  checkpoint directory, so the resumed run can save those steps again.

  Args:
    manager: the run's manager (its directory holds at least one step).
    abstract_state: as for ``restore``.
    check: ``check(state, data_state)`` raising an ``Exception`` when the
      restored step must not be resumed from.

  Returns:
    (state, data position, config, step).

  Raises:
    NoUsableCheckpointError: no step is usable (all are left in place); the
      message names the directory, each step's reason and the way out.
  """
  directory = files.path(manager.directory)
  skipped: list[tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, data_state, config = restore(manager, abstract_state, step)
      if not isinstance(data_state, dict) or not data_state:
        raise ValueError("its data-iterator position is empty")
      check(state, data_state)
    except Exception as e:  # noqa: BLE001 - any failure means: try older
      first_line = (str(e).splitlines() or [""])[0][:300]
      reason = f"{type(e).__name__}: {first_line}"
      skipped.append((step, reason))
      logging.warning(
        "%s: skipping checkpoint step %d: %s", directory, step, reason
      )
      continue
    manager.wait_until_finished()
    for bad, reason in skipped:
      moved = _set_aside(manager, bad)
      logging.warning(
        "%s: resuming from step %d; damaged step %d (%s) moved to %s",
        directory,
        step,
        bad,
        reason,
        moved,
      )
    if skipped:
      manager.reload()
    return state, data_state, config, step
  raise NoUsableCheckpointError(
    f"{directory}: no usable checkpoint ("
    + "; ".join(f"step {s}: {r}" for s, r in skipped)
    + f"). Restore a good checkpoint there, or delete {directory} (or the "
    "whole stage directory) to train this stage afresh."
  )


def load_params(
  directory: str | pathlib.Path, step: int | None = None
) -> tuple[Any, dict]:
  """Trained params and config of a finished run, without its train state.

  For a later stage starting from this one (stage 2 from stage 1): arrays
  come back as host numpy arrays in the saved nested-dict layout.

  Args:
    directory: the run's checkpoint directory.
    step: which step; None = latest.

  Returns:
    (params tree, config dict).
  """
  directory = files.path(directory, absolute=True)
  if not directory.exists():
    raise FileNotFoundError(f"{directory}: no checkpoints here")
  # Handlers named up front and read-only options spelled out, so orbax
  # restores quietly instead of warning about what it had to guess.
  with ocp.CheckpointManager(
    directory,
    item_handlers={
      STATE: ocp.StandardCheckpointHandler(),
      DATA: ocp.JsonCheckpointHandler(),
      CONFIG: ocp.JsonCheckpointHandler(),
    },
    options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0
    ),
  ) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint to load")
    try:
      meta = manager.item_metadata(step)[STATE]
      target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(
          m.shape,
          m.dtype,
          sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]),
        ),
        meta,
      )
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            STATE: ocp.args.StandardRestore(target),
            CONFIG: ocp.args.JsonRestore(),
          }
        ),
      )
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many
      # A later stage must not silently start from an older step; rerunning
      # the run that wrote it falls back and retrains the damaged one.
      raise NoUsableCheckpointError(
        f"{directory / str(step)}: damaged checkpoint ({type(e).__name__}: "
        f"{(str(e).splitlines() or [''])[0][:300]}). Rerun the stage that "
        "wrote it (it resumes from an older checkpoint and trains the "
        "damaged steps again), or delete its directory to train it afresh."
      ) from e
  params = jax.tree.map(lambda x: jax.device_get(x), restored[STATE]["params"])
  return params, restored[CONFIG]
