"""Real datasets: published counts, text joins and malformed-input errors."""

import types
import zipfile

import numpy as np
import pytest

from ilm_jax.data import DataFormatError, load_dataset, movielens, openp5
from ilm_jax.data.kcore import kcore


def _cfg(name, **kw):
  return types.SimpleNamespace(name=name, **kw)


def test_embedded_latest_small_has_text_and_time_order():
  data = load_dataset(_cfg("ml-latest-small"))
  assert data.stats() == {"users": 610, "items": 3650, "interactions": 90274}
  toy = list(data.catalog.item_ids).index("1")
  assert data.catalog.item_fields["title"][toy] == "Toy Story (1995)"
  assert "Animation" in data.catalog.item_fields["genres"][toy]
  assert "pixar" in data.catalog.item_fields["tags"][toy]


def test_raw_latest_small_without_kcore_keeps_every_rating():
  data = load_dataset(_cfg("ml-latest-small", kcore=0))
  assert data.stats() == {"users": 610, "items": 9724, "interactions": 100836}


@pytest.mark.needs_shared
@pytest.mark.parametrize(
  "name, users, items, interactions",
  [
    ("openp5-ml100k", 943, 1349, 99287),
    ("openp5-beauty", 22363, 12101, 198502),
    ("openp5-clothing", 39387, 23033, 278677),
    ("ml-100k", 943, 1349, 99287),
  ],
)
def test_openp5_published_counts(shared_data, name, users, items, interactions):
  path = shared_data / "ml-100k" if name == "ml-100k" else shared_data
  data = load_dataset(_cfg(name, path=str(path)))
  assert data.stats() == {
    "users": users,
    "items": items,
    "interactions": interactions,
  }


@pytest.mark.needs_shared
def test_openp5_text_joins(shared_data):
  ml = load_dataset(_cfg("openp5-ml100k", path=str(shared_data)))
  first = list(ml.catalog.item_ids).index("1")
  assert ml.catalog.item_fields["title"][first] == "Toy Story (1995)"
  beauty = load_dataset(_cfg("openp5-beauty", path=str(shared_data)))
  assert beauty.catalog.has_text
  assert (beauty.catalog.item_fields["text"] != "").mean() > 0.99
  clothing = load_dataset(_cfg("openp5-clothing", path=str(shared_data)))
  assert not clothing.catalog.has_text


@pytest.mark.needs_shared
def test_openp5_ml100k_sequences_match_the_file(shared_data):
  path = shared_data / "openp5" / "ML100K" / "user_sequence.txt"
  first = path.read_text().splitlines()[0].split()
  data = load_dataset(_cfg("openp5-ml100k", path=str(shared_data)))
  user = list(data.catalog.user_ids).index(first[0])
  got = data.catalog.item_ids[data.sequences[user]]
  assert list(got) == first[1:]


def test_malformed_user_sequence_names_file_and_line(tmp_path):
  path = tmp_path / "user_sequence.txt"
  path.write_text("1 10 11 12\n2 10 11\n3\n")
  with pytest.raises(DataFormatError, match=r"user_sequence.txt:3"):
    openp5.read_user_sequences(path)


def test_malformed_ml100k_rating_names_file_and_line(tmp_path):
  (tmp_path / "u.data").write_text("1\t2\t5\t881250949\n1\tx\t3\t881250950\n")
  with pytest.raises(DataFormatError, match=r"u.data:2: field 'item'"):
    movielens.load_ml100k(tmp_path)


def test_malformed_zip_member_names_member_and_line(tmp_path):
  path = tmp_path / "ml-latest-small.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(
      "ml-latest-small/ratings.csv",
      "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0\n",
    )
  with pytest.raises(DataFormatError, match=r"ratings.csv:3: expected 4"):
    movielens.load_latest_small(path)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="u.data"):
    movielens.load_ml100k(tmp_path)


def test_kcore_is_iterative():
  from ilm_jax.data.dataset import from_events

  # k=2: user 3 (one event) and item 13 (one user) go in the first pass;
  # then user 2 and item 12 are left with one event each and go in the
  # second: only users 0, 1 and items 10, 11 survive.
  users = np.array([0, 0, 1, 1, 2, 2, 3])
  items = np.array([10, 11, 10, 11, 12, 13, 12])
  data = from_events("toy", users, items, np.arange(7))
  out = kcore(data, 2)
  assert out.stats() == {"users": 2, "items": 2, "interactions": 4}
  assert list(out.catalog.item_ids) == ["10", "11"]
  with pytest.raises(ValueError, match="no user survives"):
    kcore(data, 10)
