"""Resuming past damaged checkpoints: newest first, older ones as fallback."""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.experiment_config import loop_config
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import loop


class Line(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(
      2,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.5), ("embed", "mlp")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
    )(x)


def _loss(params, frozen, batch, rng):
  del frozen, rng
  loss = jnp.mean((Line().apply({"params": params}, batch["x"]) - 1.0) ** 2)
  return loss, {}


class Batches:
  """Deterministic batches from their position; refuses a bad position."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    x = np.random.default_rng(self.position).normal(size=(8, 3))
    return {"x": x.astype(np.float32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def _train(workdir, num_steps=6):
  boxed = Line().init(jax.random.key(0), jnp.ones((1, 3)))
  c = loop_config()
  c.update(
    num_steps=num_steps,
    warmup_steps=1,
    learning_rate=0.05,
    log_every=1,
    checkpoint_every=2,
    keep_checkpoints=3,
    progress_bar=False,
  )
  return loop.train(
    _loss,
    nn.unbox(boxed)["params"],
    nn.get_partition_spec(boxed)["params"],
    Batches(),
    c,
    workdir,
    mesh=make_mesh((8, 1, 1)),
  )


def _truncate_state(step_dir: pathlib.Path):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _empty_data_item(step_dir: pathlib.Path):
  (step_dir / "data" / "metadata").write_text("")


def _empty_newer_step(step_dir: pathlib.Path):
  (step_dir.parent / "8").mkdir()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A 6-step run (checkpoints at 2, 4, 6) and its final params."""
  workdir = tmp_path_factory.mktemp("finished")
  result = _train(workdir)
  return workdir, jax.device_get(result.state.params)


@pytest.mark.parametrize(
  "damage, skipped",
  [(_truncate_state, 6), (_empty_data_item, 6), (_empty_newer_step, 8)],
)
def test_damaged_newest_step_falls_back_and_retrains(
  finished, tmp_path, caplog, damage, skipped
):
  import shutil

  source, params = finished
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  checkpoints = workdir / loop.CHECKPOINT_DIR
  damage(checkpoints / "6")
  with caplog.at_level(logging.WARNING):
    result = _train(workdir)
  assert f"skipping checkpoint step {skipped}" in caplog.text
  # A damaged step 6 is retrained from step 4, to the same model.
  assert result.start_step == (4 if skipped == 6 else 6)
  assert (workdir / ckpt.DAMAGED_DIR / str(skipped)).is_dir()
  assert ckpt.make_manager(checkpoints, 2, 3).latest_step() == 6
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
    jax.device_get(result.state.params),
    params,
  )


def test_non_finite_newest_step_is_skipped(finished, tmp_path, caplog):
  import shutil

  source, _ = finished
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  manager = ckpt.make_manager(workdir / loop.CHECKPOINT_DIR, 1, 5)
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
    manager.item_metadata(6)[ckpt.STATE],
  )
  state, data, config = ckpt.restore(manager, abstract, 6)
  state = jax.tree.map(lambda x: x, state)
  state["params"] = jax.tree.map(lambda x: x * np.nan, state["params"])
  state["step"] = np.asarray(7, np.int32)
  ckpt.save(manager, 7, state, data, config, force=True)
  manager.wait_until_finished()
  manager.close()
  with caplog.at_level(logging.WARNING):
    result = _train(workdir, num_steps=7)
  assert "skipping checkpoint step 7" in caplog.text
  assert "non-finite parameters" in caplog.text
  assert result.start_step == 6
  assert all(
    np.isfinite(x).all()
    for x in jax.tree.leaves(jax.device_get(result.state.params))
  )


def test_no_usable_checkpoint_stops_naming_the_directory(finished, tmp_path):
  import shutil

  source, _ = finished
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  checkpoints = workdir / loop.CHECKPOINT_DIR
  for step in (2, 4, 6):
    _empty_data_item(checkpoints / str(step))
  with pytest.raises(ckpt.NoUsableCheckpointError) as e:
    _train(workdir)
  message = str(e.value)
  assert str(checkpoints.absolute()) in message
  assert "step 2" in message and "step 6" in message
  assert "delete" in message and "afresh" in message
  # Nothing moved: the user decides what to keep.
  assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [
    "2",
    "4",
    "6",
  ]


def test_later_stage_loading_a_damaged_checkpoint_is_told_what_to_do(
  finished, tmp_path
):
  import shutil

  source, params = finished
  shutil.copytree(source, tmp_path / "run")
  checkpoints = tmp_path / "run" / loop.CHECKPOINT_DIR
  loaded, _ = ckpt.load_params(checkpoints)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  _truncate_state(checkpoints / "6")
  with pytest.raises(ckpt.NoUsableCheckpointError) as e:
    ckpt.load_params(checkpoints)
  assert str(checkpoints.absolute() / "6") in str(e.value)
  assert "Rerun the stage that wrote it" in str(e.value)
