"""TFDS array_record export builder: written without TensorFlow, read back.

The builder runs once per session in a subprocess where importing
TensorFlow raises, so writing and reading are proven to need no TensorFlow
whether or not it happens to be installed.
"""

import json
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from ilm_jax.data import leave_one_out, load_dataset, tfds_builder

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
