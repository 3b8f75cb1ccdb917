"""TFDS array_record builder + grain loader: round trip, resume, sharding.

The builder runs once per session in a subprocess where importing
TensorFlow raises, so writing and reading are proven to need no TensorFlow
whether or not it happens to be installed.
"""

import json
import subprocess
import sys
import textwrap
import types

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ilm_jax.data import leave_one_out, load_dataset, tfds_builder
from ilm_jax.data import loader as data_loader

DATASET = "ml-latest-small"

# Every import finder is wrapped to answer "not found" for tensorflow, which
# is exactly how an environment without it behaves: ``import tensorflow``
# raises and ``importlib.util.find_spec("tensorflow")`` is None. (A None entry
# in sys.modules would not do: TFDS reads "tensorflow" in sys.modules as
# "TensorFlow is loaded".)
_PREPARE_WITHOUT_TF = textwrap.dedent(
  """
  import importlib.abc, json, sys

  class HideTensorflow(importlib.abc.MetaPathFinder):
    def __init__(self, finder):
      self._finder = finder

    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] == "tensorflow":
        return None
      return self._finder.find_spec(name, path, target)

    def invalidate_caches(self):
      getattr(self._finder, "invalidate_caches", lambda: None)()

  sys.meta_path[:] = [HideTensorflow(f) for f in sys.meta_path]
  try:
    import tensorflow  # noqa: F401
    raise SystemExit("tensorflow was not hidden")
  except ImportError:
    pass

  from ilm_jax.data import tfds_builder
  builder = tfds_builder.make_builder(sys.argv[2], sys.argv[1])
  counts = tfds_builder.prepare(builder)
  first = tfds_builder.data_sources(builder)["train"][0]
  counts["first_target"] = int(first["target"])
  counts["tensorflow_loaded"] = "tensorflow" in sys.modules
  print(json.dumps(counts))
  """
)


@pytest.fixture(scope="module")
def loo():
  return leave_one_out(load_dataset(types.SimpleNamespace(name=DATASET)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(data_dir, counts printed by the TensorFlow-free preparation)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  result = subprocess.run(
    [sys.executable, "-c", _PREPARE_WITHOUT_TF, str(data_dir), DATASET],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sources(prepared):
  data_dir, _ = prepared
  return tfds_builder.data_sources(tfds_builder.make_builder(DATASET, data_dir))


def _read_all(source):
  records = source.__getitems__(list(range(len(source))))
  return (
    np.array([r["user"] for r in records], dtype=np.int32),
    np.stack([r["history"] for r in records]),
    np.array([r["target"] for r in records], dtype=np.int32),
  )


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_prepare_needs_no_tensorflow_and_counts_match(prepared, loo):
  _, counts = prepared
  users, _, targets = loo.sequential_examples()
  assert not counts["tensorflow_loaded"]
  assert counts["train"] == len(users)
  assert counts["valid"] == counts["test"] == loo.num_users
  assert counts["users"] == loo.num_users
  assert counts["items"] == loo.num_items
  assert counts["first_target"] == targets[0]


@pytest.mark.parametrize("split_name", ["train", "valid", "test"])
def test_records_round_trip_in_memory_split(sources, loo, split_name):
  expected = tfds_builder.split_examples(loo, split_name)
  got = _read_all(sources[split_name])
  for name, e, g in zip(("user", "history", "target"), expected, got):
    assert g.dtype == np.int32, name
    np.testing.assert_array_equal(g, e, err_msg=f"{split_name}/{name}")


def test_valid_and_test_histories_follow_the_protocol(sources, loo):
  """Test history = valid history shifted by the validation item."""
  _, valid_hist, valid_target = _read_all(sources["valid"])
  _, test_hist, test_target = _read_all(sources["test"])
  np.testing.assert_array_equal(valid_target, loo.valid_items)
  np.testing.assert_array_equal(test_target, loo.test_items)
  np.testing.assert_array_equal(test_hist[:, -1], loo.valid_items)
  for u in range(0, loo.num_users, 37):
    train = loo.train_sequences[u]
    n = min(len(train), loo.max_history)
    np.testing.assert_array_equal(
      valid_hist[u, loo.max_history - n :], train[-n:]
    )
    assert (valid_hist[u, : loo.max_history - n] == -1).all()


def test_catalog_metadata_reloads(prepared, loo):
  data_dir, _ = prepared
  meta = tfds_builder.make_builder(DATASET, data_dir).info.metadata
  assert meta["item_ids"] == [str(i) for i in loo.catalog.item_ids]
  assert meta["user_ids"] == [str(u) for u in loo.catalog.user_ids]
  text = meta["item_text"]
  assert len(text) == loo.num_items
  for i in (0, 17, loo.num_items - 1):
    assert text[i] == loo.catalog.item_text(i)


def test_loader_batches_identical_from_array_record_and_memory(sources, loo):
  kwargs = dict(batch_size=64, seed=11, num_epochs=None)
  from_disk = iter(data_loader.make_loader(sources["train"], **kwargs))
  in_memory = iter(data_loader.loader_from_split(loo, "train", **kwargs))
  for _ in range(3):
    a, b = next(from_disk), next(in_memory)
    assert a["history"].shape == (64, loo.max_history)
    assert a["history"].dtype == a["user"].dtype == np.int32
    _assert_batches_equal(a, b)


def test_seed_decides_order(loo):
  def first_users(seed):
    it = iter(
      data_loader.loader_from_split(loo, "train", batch_size=64, seed=seed)
    )
    return next(it)["user"]

  np.testing.assert_array_equal(first_users(1), first_users(1))
  assert not np.array_equal(first_users(1), first_users(2))


def test_resume_mid_epoch_at_same_example(sources):
  def make():
    return data_loader.make_loader(sources["train"], batch_size=32, seed=5)

  original = iter(make())
  for _ in range(7):
    next(original)
  state = original.get_state()
  resumed = iter(make())
  data_loader.restore_state(resumed, state)
  for _ in range(3):
    _assert_batches_equal(next(resumed), next(original))


def test_resume_completes_the_epoch_exactly_once(loo):
  """Before + after a restore = every example once (drop_remainder aside)."""

  def make():
    return data_loader.loader_from_split(loo, "valid", batch_size=16, seed=3)

  first = iter(make())
  seen = [next(first)["user"] for _ in range(10)]
  resumed = iter(make())
  data_loader.restore_state(resumed, first.get_state())
  seen += [batch["user"] for batch in resumed]
  users = np.concatenate(seen)
  assert len(users) == (loo.num_users // 16) * 16
  assert len(np.unique(users)) == len(users)


def test_iterator_state_round_trips_through_orbax(loo, tmp_path):
  def make():
    return data_loader.loader_from_split(loo, "valid", batch_size=16, seed=9)

  original = iter(make())
  for _ in range(4):
    next(original)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(
      4,
      args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(original)),
    )
    manager.wait_until_finished()
  resumed = iter(make())
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.restore(
      4,
      args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)),
    )
  _assert_batches_equal(next(resumed), next(original))


def test_restore_refuses_a_different_order(loo):
  saved = iter(
    data_loader.loader_from_split(loo, "valid", batch_size=16, seed=1)
  )
  next(saved)
  other = iter(
    data_loader.loader_from_split(loo, "valid", batch_size=16, seed=2)
  )
  with pytest.raises(ValueError, match="sampler"):
    data_loader.restore_state(other, saved.get_state())


def _shard_users(source, shard_index, **kwargs):
  options = grain.sharding.ShardOptions(
    shard_index=shard_index, shard_count=2, drop_remainder=False
  )
  loader = data_loader.make_loader(
    source, batch_size=1, seed=4, shard_options=options, **kwargs
  )
  return np.concatenate([b["user"][b["mask"]] for b in loader])


def test_two_shards_partition_the_examples(sources, loo):
  shard0 = _shard_users(sources["test"], 0)
  shard1 = _shard_users(sources["test"], 1)
  assert not set(shard0) & set(shard1)
  np.testing.assert_array_equal(
    np.sort(np.concatenate([shard0, shard1])), np.arange(loo.num_users)
  )
  assert abs(len(shard0) - len(shard1)) <= 1


def test_padded_eval_batches_cover_every_user_once_per_host(loo):
  source = data_loader.ExampleArrays.from_split(loo, "test")
  batch_size = 64
  per_host = []
  for shard_index in range(2):
    options = grain.sharding.ShardOptions(shard_index, 2, drop_remainder=True)
    loader = data_loader.make_loader(
      source,
      batch_size=batch_size,
      shuffle=False,
      shard_options=options,
      pad_final_batch=True,
    )
    batches = list(loader)
    assert len(batches) == data_loader.batches_per_epoch(
      len(source), batch_size, 2, pad_final_batch=True
    )
    per_host.append(np.concatenate([b["user"][b["mask"]] for b in batches]))
  users = np.concatenate(per_host)
  np.testing.assert_array_equal(np.sort(users), np.arange(loo.num_users))


def test_default_shard_is_this_jax_process():
  options = data_loader.host_shard_options()
  assert options.shard_index == jax.process_index()
  assert options.shard_count == jax.process_count()
