"""The generic sharded training loop, shared by stage 1 and stage 2.

A stage supplies a loss function of the *trainable* params, a frozen tree that
never enters the optimiser (the CF table; in stage 2 also the LLM), and a
checkpointable iterator of this host's share of each global batch. The loop
places params by their logical axis names on a (data, fsdp, tensor) mesh,
joins the hosts' shares into global arrays, jits one update with explicit
in/out shardings, and on the way saves checkpoints (train state, data
position, config), TensorBoard scalars and a metrics JSON, resuming from the
latest checkpoint when one exists.

Because the loss is computed on the *global* batch inside one jitted function,
contrastive in-batch negatives span every device of the data-parallel batch;
XLA inserts the gathers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from tqdm import tqdm

from ilm_jax import files
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.experiment_config import MESH_RULES
from ilm_jax.sharding import mesh as mesh_lib
from ilm_jax.train import guards
from ilm_jax.train import optimizer as optim
from ilm_jax.train import provenance as provenance_lib
from ilm_jax.train.summaries import MetricsLog

CHECKPOINT_DIR = "checkpoints"
NonFiniteLossError = guards.NonFiniteLossError
# A metric "x" with a companion "x_weight" is averaged over a logging window
# weighted by it (e.g. a loss over the re-ranking rows of mixed batches);
# windows with zero total weight leave it out.
WEIGHT_SUFFIX = "_weight"
# loss_fn(params, frozen, batch, rng) -> (scalar loss, metrics)
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


class CheckpointableIterator(Protocol):
  """Yields this host's share of each global batch; resumable."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


@struct.dataclass
class TrainState:
  """What a checkpoint holds: completed steps, params, optimiser state."""

  step: jax.Array
  params: Any
  opt_state: Any


def window_mean(window: list[dict]) -> dict[str, float]:
  """Means of the logged metrics over a window of steps (``WEIGHT_SUFFIX``)."""
  out = {}
  for k in window[0]:
    if k.endswith(WEIGHT_SUFFIX):
      continue
    values = np.asarray([m[k] for m in window], np.float64)
    if k + WEIGHT_SUFFIX not in window[0]:
      out[k] = float(values.mean())
      continue
    weights = np.asarray([m[k + WEIGHT_SUFFIX] for m in window], np.float64)
    if weights.sum() > 0:
      out[k] = float((values * weights).sum() / weights.sum())
  return out


def _place(value, sharding: jax.sharding.Sharding) -> jax.Array:
  """A frozen leaf on devices: a host value sliced into its shards; a jax
  array (an LLM restored straight into its shards) kept, or resharded on
  the devices, never gathered through one host."""
  if isinstance(value, jax.Array):
    if value.sharding.is_equivalent_to(sharding, value.ndim):
      return value
    return jax.device_put(value, sharding)
  return mesh_lib.host_to_global(value, sharding)


class Trainer:
  """One jitted, sharded update step and the placement of its inputs.

  Args:
    loss_fn: ``loss_fn(params, frozen, batch, rng) -> (loss, metrics)``.
    config: loop config (``experiment_config.loop_config``).
    params: trainable params (host or device arrays, unboxed).
    param_specs: the same tree of logical PartitionSpecs
      (``nn.get_partition_spec`` of the boxed params).
    mesh: the device mesh; default: every device on the ``data`` axis.
    rules: logical-to-mesh axis rules.
    frozen_specs: logical specs of the frozen tree; None = replicated.
  """

  def __init__(
    self,
    loss_fn: LossFn,
    config,
    params,
    param_specs,
    mesh: jax.sharding.Mesh | None = None,
    rules=MESH_RULES,
    frozen_specs=None,
  ):
    self.config = config
    self.mesh = mesh if mesh is not None else mesh_lib.make_mesh()
    self.rules = rules
    self.optimizer = optim.make_optimizer(config, params)
    self.schedule = optim.learning_rate_schedule(config)
    self.param_shardings = mesh_lib.tree_shardings(
      param_specs, self.mesh, rules
    )
    self.frozen_specs = frozen_specs
    self._loss_fn = loss_fn
    self._step_fn = None

  @property
  def data_parallelism(self) -> int:
    shape = dict(self.mesh.shape)
    return shape.get("data", 1) * shape.get("fsdp", 1)

  def _context(self) -> contextlib.ExitStack:
    """The mesh and the logical-axis rules, entered together."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self, params) -> TrainState:
    """Places params by their shardings and builds the optimiser state."""
    with self._context():
      # Via host copies: the step donates its state, and device_put may
      # reuse the caller's buffers, which donation would then delete.
      host = jax.tree.map(np.asarray, jax.device_get(params))
      params = jax.tree.map(mesh_lib.host_to_global, host, self.param_shardings)
      opt_state = jax.jit(self.optimizer.init)(params)
      step = mesh_lib.host_to_global(
        np.zeros((), np.int32), mesh_lib.replicated(self.mesh)
      )
    return TrainState(step=step, params=params, opt_state=opt_state)

  def place_frozen(self, frozen):
    """Puts the frozen tree on devices (replicated unless specs say)."""
    if frozen is None:
      return None
    if self.frozen_specs is None:
      shardings = jax.tree.map(lambda _: mesh_lib.replicated(self.mesh), frozen)
    else:
      shardings = mesh_lib.tree_shardings(
        self.frozen_specs, self.mesh, self.rules
      )
    return jax.tree.map(_place, frozen, shardings)

  def place_batch(self, batch: dict[str, np.ndarray]):
    """Joins the hosts' shares of a global batch, sharded on its leading axis.

    Args:
      batch: this process's rows of every field (all of them on one host),
        e.g. ``int32[B / hosts, L]``; the data pipeline gives each host a
        contiguous share, in process order.

    Returns:
      Global arrays of ``hosts`` times as many rows, sharded along the
      data-like mesh axes.
    """
    n = self.data_parallelism
    hosts = jax.process_count()
    for name, value in batch.items():
      if (value.shape[0] * hosts) % n:
        raise ValueError(
          f"batch field {name!r} has {value.shape[0] * hosts} rows, not "
          f"divisible by the {n} data-parallel devices of mesh "
          f"{dict(self.mesh.shape)}"
        )
    return {
      k: jax.make_array_from_process_local_data(
        mesh_lib.batch_sharding(self.mesh, np.ndim(v)), np.asarray(v)
      )
      for k, v in batch.items()
    }

  def _build(self, state, frozen, batch):
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
    seed = int(self.config.seed)

    def step_fn(state: TrainState, frozen, batch):
      rng = jax.random.fold_in(jax.random.key(seed), state.step)
      grad_fn = jax.value_and_grad(self._loss_fn, has_aux=True)
      (loss, metrics), grads = grad_fn(state.params, frozen, batch, rng)
      updates, opt_state = self.optimizer.update(
        grads, state.opt_state, state.params
      )
      params = optax.apply_updates(state.params, updates)
      metrics = dict(metrics)
      metrics["loss"] = loss
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["learning_rate"] = self.schedule(state.step)
      new_state = TrainState(state.step + 1, params, opt_state)
      return new_state, metrics

    return jax.jit(
      step_fn,
      in_shardings=(state_shardings, frozen_shardings, batch_shardings),
      out_shardings=(state_shardings, mesh_lib.replicated(self.mesh)),
      donate_argnums=(0,),
    )

  def compiled_text(self, state: TrainState, frozen, batch) -> str:
    """The optimised HLO text of the step on these placed inputs (what
    ``step`` runs; ``ilm_jax.step_profile`` reads it)."""
    with self._context():
      if self._step_fn is None:
        self._step_fn = self._build(state, frozen, batch)
      return self._step_fn.lower(state, frozen, batch).compile().as_text()

  def step(self, state: TrainState, frozen, batch) -> tuple[TrainState, dict]:
    """One update on a placed batch (see ``place_batch``)."""
    with self._context():
      if self._step_fn is None:
        self._step_fn = self._build(state, frozen, batch)
      return self._step_fn(state, frozen, batch)


@dataclasses.dataclass
class TrainResult:
  """What ``train`` returns.

  Attributes:
    state: the final train state (sharded device arrays).
    metrics: the last logged train metrics plus the last evaluation.
    start_step: the step the run started or resumed from.
  """

  state: TrainState
  metrics: dict[str, float]
  start_step: int


def _final_window(log: MetricsLog, num_steps: int) -> dict:
  """The training window logged at the final step (without its step)."""
  for record in reversed(log.history.get("train", [])):
    if record["step"] == num_steps:
      return {k: v for k, v in record.items() if k != "step"}
  return {}


def _final_evaluation(log, num_steps, in_loop, eval_fn, params) -> dict:
  """The final evaluation: the one already logged at ``num_steps`` (after the
  ``in_loop`` periodic one there), or run and logged now."""
  done = [r for r in log.history.get("eval", []) if r["step"] == num_steps]
  if len(done) > in_loop:
    return {k: v for k, v in done[-1].items() if k != "step"}
  metrics = eval_fn(params, num_steps)
  log.write("eval", num_steps, metrics)
  return dict(metrics)


def train(
  loss_fn: LossFn,
  params,
  param_specs,
  data: CheckpointableIterator,
  config,
  workdir: str | pathlib.Path,
  *,
  mesh: jax.sharding.Mesh | None = None,
  rules=MESH_RULES,
  frozen=None,
  frozen_specs=None,
  run_config: dict | None = None,
  eval_fn: Callable[[Any, int], dict] | None = None,
  desc: str = "train",
  provenance: dict | None = None,
) -> TrainResult:
  """Trains to ``config.num_steps``, resuming from the latest checkpoint.

  Args:
    loss_fn: ``loss_fn(params, frozen, batch, rng) -> (loss, metrics)``.
    params: initial trainable params (ignored when resuming).
    param_specs: logical PartitionSpecs of params.
    data: checkpointable iterator of this host's share of each global
      batch.
    config: loop config (``experiment_config.loop_config``).
    workdir: this stage's directory: checkpoints/, tensorboard/,
      metrics.json.
    mesh: device mesh (default: all devices data-parallel).
    rules: logical axis rules.
    frozen: untrained inputs of the loss (never in the optimiser state).
    frozen_specs: their logical specs (None = replicated).
    run_config: the full config as a dict, saved in each checkpoint.
    eval_fn: ``eval_fn(params, step) -> metrics`` run every
      ``config.eval_every`` steps (if > 0) and at the end.
    desc: progress bar label (and the config section named in messages).
    provenance: what the trained state depends on (``train.provenance``);
      recorded when the run starts, compared when it resumes.

  Returns:
    A TrainResult.

  Raises:
    NonFiniteLossError: a NaN/inf loss or gradient (last good checkpoint is
      kept).
    ProvenanceError: resuming under other settings or inputs than the
      checkpoints were trained with (unless ``restart_if_changed``).
    NoUsableCheckpointError: every checkpoint in the workdir is damaged.
  """
  workdir = files.path(workdir)
  trainer = Trainer(
    loss_fn, config, params, param_specs, mesh, rules, frozen_specs
  )
  manager = ckpt.make_manager(
    workdir / CHECKPOINT_DIR,
    int(config.checkpoint_every),
    int(config.keep_checkpoints),
  )
  log = MetricsLog(workdir)
  run_config = run_config or {}
  num_steps = int(config.num_steps)
  state = trainer.init_state(params)
  start = 0
  if provenance is not None and manager.latest_step() is not None:
    guards.resolve_changed_inputs(
      manager, log, workdir, provenance, config, desc
    )
  if manager.latest_step() is not None:
    # Newest first, falling back past damaged steps (each one named).
    state, _, _, _ = ckpt.restore_newest_usable(
      manager,
      ckpt.abstract_like(state),
      lambda state, data_state: guards.check_resumable(state, data, data_state),
    )
    start = int(state.step)
    logging.info("%s: resumed from step %d in %s", desc, start, workdir)
  # Records past the restored step (or any train records of a run that never
  # checkpointed) belong to a future that did not happen.
  log.truncate(start)
  if provenance is not None:
    provenance_lib.record(workdir, provenance)
  if start >= num_steps and log.history.get("final"):
    # A finished run restarted: report what it measured (training window
    # and final evaluation) instead of an empty result, and do not evaluate
    # or record the final evaluation again.
    manager.close()
    log.close()
    return TrainResult(
      state=state, metrics=dict(log.history["final"]), start_step=start
    )
  eval_every = int(config.get("eval_every", 0))
  if start >= num_steps:
    # Killed after the last checkpoint but before the final record: the
    # last training window is in the log (it is written before that
    # checkpoint), and so is the final evaluation if it got that far.
    try:
      last_metrics = _final_window(log, num_steps)
      if eval_fn is not None:
        in_loop = int(eval_every > 0 and num_steps % eval_every == 0)
        last_metrics.update(
          _final_evaluation(log, num_steps, in_loop, eval_fn, state.params)
        )
      log.write_final(last_metrics)
    finally:
      manager.close()
      log.close()
    return TrainResult(state=state, metrics=last_metrics, start_step=start)
  frozen = trainer.place_frozen(frozen)
  last_metrics: dict[str, float] = {}
  window: list[dict] = []
  log_every = max(int(config.log_every), 1)
  bar = tqdm(
    total=num_steps,
    initial=start,
    desc=desc,
    disable=not config.get("progress_bar", True),
  )
  try:
    for step in range(start + 1, num_steps + 1):
      batch = trainer.place_batch(next(data))
      state, metrics = trainer.step(state, frozen, batch)
      metrics = jax.device_get(metrics)
      guards.check_finite_metrics(step, metrics, manager)
      window.append(metrics)
      bar.update(1)
      if step % log_every == 0 or step == num_steps:
        last_metrics = window_mean(window)
        window = []
        log.write("train", step, last_metrics)
        bar.set_postfix(loss=f"{last_metrics['loss']:.4f}")
      if eval_fn is not None and eval_every > 0 and step % eval_every == 0:
        log.write("eval", step, eval_fn(state.params, step))
      guards.save_checked(manager, step, state, data, run_config)
    if manager.latest_step() != num_steps and num_steps > start:
      guards.save_checked(
        manager, num_steps, state, data, run_config, force=True
      )
    manager.wait_until_finished()
    if eval_fn is not None:
      final_eval = eval_fn(state.params, num_steps)
      log.write("eval", num_steps, final_eval)
      last_metrics = {**last_metrics, **final_eval}
    log.write_final(last_metrics)
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    log.close()
  return TrainResult(state=state, metrics=last_metrics, start_step=start)
