"""The generic training loop: sharding equivalence, resume, NaN stop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.experiment_config import loop_config
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import loop, optimizer, provenance
from ilm_jax.train.provenance import ProvenanceError


class Toy(nn.Module):
  """A linear scorer with sharded params, enough to exercise the loop."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(
      4,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.5), ("embed", "mlp")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
    )(x)


def _toy_loss(params, frozen, batch, rng):
  del rng
  pred = Toy().apply({"params": params}, batch["x"]) @ frozen
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, {"mse": loss}


class ToyData:
  """Deterministic batches from (seed, position); NaN at ``nan_at``."""

  def __init__(self, nan_at=-1, crash_at=-1):
    self.position = 0
    self.nan_at, self.crash_at = nan_at, crash_at

  def __next__(self):
    self.position += 1
    if self.position == self.crash_at:
      raise KeyboardInterrupt("simulated interruption")
    r = np.random.default_rng(self.position)
    x = r.normal(size=(8, 4)).astype(np.float32)
    y = x[:, :2] * 2.0
    if self.position == self.nan_at:
      x[0, 0] = np.nan
    return {"x": x, "y": y}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def _toy_setup():
  boxed = Toy().init(jax.random.key(0), jnp.ones((1, 4)))
  params = nn.unbox(boxed)["params"]
  specs = nn.get_partition_spec(boxed)["params"]
  frozen = np.eye(4, 2, dtype=np.float32)
  return params, specs, frozen


def _config(**kw):
  c = loop_config()
  c.num_steps = 10
  c.warmup_steps = 2
  c.learning_rate = 0.05
  c.log_every = 1
  c.checkpoint_every = 2
  c.keep_checkpoints = 3
  c.progress_bar = False
  c.update(kw)
  return c


def _mesh():
  return make_mesh((2, 4, 1))


def test_schedule_warms_up_then_decays():
  sched = optimizer.learning_rate_schedule(_config(num_steps=100))
  assert float(sched(0)) == 0.0
  assert float(sched(2)) == pytest.approx(0.05)
  assert float(sched(100)) == pytest.approx(0.005)
  assert float(sched(50)) < 0.05


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
  params, specs, frozen = _toy_setup()
  full = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(),
    tmp_path / "full",
    mesh=_mesh(),
    frozen=frozen,
  )
  with pytest.raises(KeyboardInterrupt):
    loop.train(
      _toy_loss,
      params,
      specs,
      ToyData(crash_at=6),
      _config(),
      tmp_path / "cut",
      mesh=_mesh(),
      frozen=frozen,
    )
  resumed = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(),
    tmp_path / "cut",
    mesh=_mesh(),
    frozen=frozen,
  )
  assert resumed.start_step == 4  # last checkpoint before the crash
  assert int(resumed.state.step) == 10
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    full.state.params,
    resumed.state.params,
  )
  history = json.loads((tmp_path / "cut" / "metrics.json").read_text())
  steps = [r["step"] for r in history["train"]]
  assert steps == list(range(1, 11))
  assert list((tmp_path / "cut" / "tensorboard").iterdir())
  # Losses of the resumed run equal those of the uninterrupted one.
  full_history = json.loads((tmp_path / "full" / "metrics.json").read_text())
  np.testing.assert_allclose(
    [r["loss"] for r in history["train"]],
    [r["loss"] for r in full_history["train"]],
    rtol=1e-5,
  )
  assert full_history["train"][-1]["loss"] < full_history["train"][0]["loss"]


def test_non_finite_loss_stops_keeping_last_good_checkpoint(tmp_path):
  params, specs, frozen = _toy_setup()
  with pytest.raises(loop.NonFiniteLossError, match="at step 5.*step 4"):
    loop.train(
      _toy_loss,
      params,
      specs,
      ToyData(nan_at=5),
      _config(),
      tmp_path,
      mesh=_mesh(),
      frozen=frozen,
    )
  saved, config = ckpt.load_params(tmp_path / loop.CHECKPOINT_DIR)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))
  assert config == {}
  manager = ckpt.make_manager(tmp_path / loop.CHECKPOINT_DIR, 2, 3)
  assert manager.latest_step() == 4
  manager.close()


def test_freeze_regex_keeps_matching_params(tmp_path):
  params, specs, frozen = _toy_setup()
  result = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(num_steps=3, freeze_regex="bias"),
    tmp_path,
    mesh=_mesh(),
    frozen=frozen,
  )
  final = jax.device_get(result.state.params)
  np.testing.assert_array_equal(final["Dense_0"]["bias"], 0.0)
  assert np.abs(final["Dense_0"]["kernel"] - params["Dense_0"]["kernel"]).max()
  with pytest.raises(ValueError, match="matches no parameter"):
    optimizer.make_optimizer(_config(freeze_regex="nothing"), params)


def test_batch_not_divisible_by_data_devices_is_named():
  params, specs, _ = _toy_setup()
  trainer = loop.Trainer(_toy_loss, _config(), params, specs, _mesh())
  with pytest.raises(ValueError, match="'x' has 6 rows"):
    trainer.place_batch({"x": np.zeros((6, 4))})


def test_window_mean_weighs_metrics_that_carry_a_weight():
  window = [
    {"loss": 1.0, "rerank_loss": 3.0, "rerank_loss_weight": 6.0},
    {"loss": 3.0, "rerank_loss": 0.0, "rerank_loss_weight": 0.0},
    {"loss": 2.0, "rerank_loss": 1.0, "rerank_loss_weight": 2.0},
  ]
  out = loop.window_mean(window)
  assert out == {"loss": 2.0, "rerank_loss": (3.0 * 6 + 1.0 * 2) / 8}
  none = loop.window_mean([window[1]])
  assert none == {"loss": 3.0}  # no rows: no re-ranking figure at all


def test_restarting_a_finished_run_keeps_its_results(tmp_path):
  params, specs, frozen = _toy_setup()
  evaluations = []

  def eval_fn(params, step):
    evaluations.append(step)
    return {"score": float(len(evaluations))}

  kw = dict(mesh=_mesh(), frozen=frozen, eval_fn=eval_fn)
  first = loop.train(
    _toy_loss, params, specs, ToyData(), _config(), tmp_path, **kw
  )
  history = (tmp_path / "metrics.json").read_text()
  again = loop.train(
    _toy_loss, params, specs, ToyData(), _config(), tmp_path, **kw
  )
  # Nothing trains, nothing is evaluated or recorded again, and the result
  # is the finished run's, not an empty dict.
  assert evaluations == [10]
  assert again.start_step == 10 and int(again.state.step) == 10
  assert again.metrics == pytest.approx(first.metrics)
  assert {"loss", "mse", "score"} <= set(again.metrics)
  assert (tmp_path / "metrics.json").read_text() == history


@pytest.mark.parametrize("evaluated", [False, True])
def test_killed_after_the_final_checkpoint_keeps_the_training_window(
  tmp_path, evaluated
):
  """A kill between the last checkpoint and the final record (during or
  just after the final evaluation): the restart reports the training window
  logged at the last step, and evaluates only if that had not finished."""
  params, specs, frozen = _toy_setup()
  evaluations = []

  class KilledError(Exception):
    pass

  def eval_fn(params, step):
    evaluations.append(step)
    if evaluations == [10] and not evaluated:
      raise KilledError  # during the final evaluation
    return {"score": 1.0}

  kw = dict(mesh=_mesh(), frozen=frozen, eval_fn=eval_fn)
  reference = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(),
    tmp_path / "ref",
    eval_fn=lambda p, s: {"score": 1.0},
    mesh=_mesh(),
    frozen=frozen,
  )
  workdir = tmp_path / "run"
  if evaluated:
    original = loop.MetricsLog.write_final

    def killed_write_final(self, metrics):
      raise KilledError  # after the final evaluation was logged

    loop.MetricsLog.write_final = killed_write_final
  try:
    with pytest.raises(KilledError):
      loop.train(_toy_loss, params, specs, ToyData(), _config(), workdir, **kw)
  finally:
    if evaluated:
      loop.MetricsLog.write_final = original
  again = loop.train(
    _toy_loss, params, specs, ToyData(), _config(), workdir, **kw
  )
  assert again.start_step == 10
  assert again.metrics == pytest.approx(reference.metrics)
  assert {"loss", "mse", "grad_norm", "score"} <= set(again.metrics)
  # The final evaluation ran again only when it had not finished, and is
  # recorded once.
  assert evaluations == ([10] if evaluated else [10, 10])
  history = json.loads((workdir / "metrics.json").read_text())
  assert [r["step"] for r in history["eval"]] == [10]
  assert history["final"] == pytest.approx(reference.metrics)


def test_non_finite_parameters_are_never_saved(tmp_path):
  # A NaN learning rate keeps the first loss and gradient finite but makes
  # every parameter NaN; a one-step run must not save or report that.
  params, specs, frozen = _toy_setup()
  with pytest.raises(loop.NonFiniteLossError, match="non-finite parameters"):
    loop.train(
      _toy_loss,
      params,
      specs,
      ToyData(),
      _config(num_steps=1, learning_rate=float("nan"), warmup_steps=0),
      tmp_path,
      mesh=_mesh(),
      frozen=frozen,
    )
  assert not list((tmp_path / loop.CHECKPOINT_DIR).glob("1"))


def test_resuming_under_changed_settings_is_refused_or_restarts(tmp_path):
  params, specs, frozen = _toy_setup()
  kw = dict(mesh=_mesh(), frozen=frozen)
  trained = {"lr": 0.05, "data": "abc"}
  with pytest.raises(KeyboardInterrupt):
    loop.train(
      _toy_loss,
      params,
      specs,
      ToyData(crash_at=6),
      _config(),
      tmp_path,
      provenance=trained,
      **kw,
    )
  with pytest.raises(ProvenanceError) as info:
    loop.train(
      _toy_loss,
      params,
      specs,
      ToyData(),
      _config(),
      tmp_path,
      provenance={**trained, "data": "abd"},
      **kw,
    )
  message = str(info.value)
  assert "data: 'abc' -> 'abd'" in message and "lr" not in message
  assert "restart_if_changed" in message
  # The same settings resume where the run stopped.
  resumed = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(),
    tmp_path,
    provenance=trained,
    **kw,
  )
  assert resumed.start_step == 4
  # Asked to, a run under changed settings discards the old checkpoints.
  again = loop.train(
    _toy_loss,
    params,
    specs,
    ToyData(),
    _config(restart_if_changed=True),
    tmp_path,
    provenance={**trained, "data": "abd"},
    **kw,
  )
  assert again.start_step == 0 and int(again.state.step) == 10
  history = json.loads((tmp_path / "metrics.json").read_text())
  assert [r["step"] for r in history["train"]] == list(range(1, 11))


def test_provenance_ignores_how_long_and_how_visibly_to_train():
  from ilm_jax.experiment_config import loop_config

  a, b = loop_config(), loop_config()
  b.num_steps, b.log_every, b.progress_bar = 99, 3, False
  assert provenance.without_bookkeeping(a) == provenance.without_bookkeeping(b)
  b.learning_rate = 0.5
  assert provenance.differences(
    provenance.without_bookkeeping(a), provenance.without_bookkeeping(b)
  ) == ["learning_rate: 0.0001 -> 0.5"]
