"""A user's own data by path: interactions CSV/TSV and OpenP5-format files."""

import csv
import gzip
import importlib.util
import math
import re
import time

import numpy as np
import pytest

from ilm_jax.data import DATASETS, DataFormatError, load_dataset, load_split
from ilm_jax.experiment_config import base_config
from tests.conftest import REPO_ROOT
from tests.tiny import tiny_bert_dir

N_USERS = 40
N_ITEMS = 30
# Items 0..N_TEXT-1 have a row in the item-text file; the rest have no text.
N_TEXT = 25


def _events(seed=0):
  """(user, item, timestamp, rating) rows: 40 users x 8-15 distinct items.

  Rows are shuffled across users, so file order is not time order.
  """
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(N_USERS):
    n = int(rng.integers(8, 16))
    items = rng.choice(N_ITEMS, n, replace=False)
    times = 1_600_000_000 + rng.choice(10**6, n, replace=False)
    ratings = rng.integers(1, 11, n) / 2  # 0.5 .. 5.0
    for i, t, r in zip(items, times, ratings):
      rows.append((f"u{u:02d}", f"tt{i:04d}", int(t), float(r)))
  return [rows[i] for i in rng.permutation(len(rows))]


def _expected(rows, min_rating=0.0):
  """{user: [item, ...] in time order} of the rows rated >= min_rating."""
  out = {}
  for user, item, _, r in sorted(rows, key=lambda row: row[2]):
    if r >= min_rating:
      out.setdefault(user, []).append(item)
  return out


def _title(i):
  # Commas inside titles exercise CSV quoting.
  return f"Movie {i}, The ({1980 + i})"


def _write_item_text(path, delimiter=","):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter=delimiter)
    w.writerow(["item_id", "Title", "genres"])
    for i in range(N_TEXT):
      w.writerow([f"tt{i:04d}", _title(i), "Drama|Comedy" if i % 2 else ""])
    w.writerow(["tt9999", "Never rated", "Horror"])  # not in interactions
  return path


# Row positions in _events' tuples, by the column that writes them.
USER, ITEM, TIME, RATING = range(4)


def _write_csv(path, rows, columns=None):
  """Rows as a delimited file; columns maps header name -> row position."""
  columns = columns or {"user_id": USER, "item_id": ITEM, "timestamp": TIME}
  delimiter = "\t" if path.suffix == ".tsv" else ","
  with open(path, "w", newline="") as f:
    w = csv.writer(f, delimiter=delimiter)
    w.writerow(columns)
    for row in rows:
      w.writerow([row[p] for p in columns.values()])
  return path


def _write_openp5(path, sequences):
  path.write_text(
    "".join(f"{u} {' '.join(items)}\n" for u, items in sequences.items())
  )
  return path


def _config(name, path, item_text="", kcore=0, min_rating=0.0):
  # The experiment config's own dataset fields, so the new field is tested.
  c = base_config().dataset
  c.name, c.path, c.item_text = name, str(path), str(item_text)
  c.kcore, c.min_rating = kcore, min_rating
  return c


def _sequences(data):
  """{raw user: [raw item, ...]} of a Dataset."""
  ids = data.catalog.item_ids
  return {
    str(u): [str(ids[i]) for i in s]
    for u, s in zip(data.catalog.user_ids, data.sequences)
  }


def test_user_file_datasets_are_registered_with_a_config_field():
  assert {"interactions", "openp5"} <= set(DATASETS)
  assert base_config().dataset.item_text == ""


def test_csv_sequences_follow_timestamps_not_file_order(tmp_path):
  rows = _events()
  path = _write_csv(tmp_path / "events.csv", rows)
  data = load_dataset(_config("interactions", path))
  want = _expected(rows)
  assert _sequences(data) == want
  assert data.name == "interactions"
  assert data.stats() == {
    "users": N_USERS,
    "items": len({r[ITEM] for r in rows}),
    "interactions": len(rows),
  }
  # Ids stay the strings the file has; no text file, no text.
  assert data.catalog.item_ids[0] == "tt0000"
  assert data.catalog.item_fields == {}
  # File order really differs from time order for this data.
  first_in_file = [r[ITEM] for r in rows if r[USER] == "u00"]
  assert first_in_file != want["u00"]


def test_tsv_with_aliases_filters_ratings_and_joins_titles(tmp_path):
  rows = _events(seed=1)
  # Other spellings, in any order.
  columns = {
    "itemId": ITEM,
    "rating": RATING,
    "userId": USER,
    "timestamp": TIME,
  }
  path = _write_csv(tmp_path / "ratings.tsv", rows, columns)
  text = _write_item_text(tmp_path / "items.csv")
  data = load_dataset(_config("interactions", path, text, min_rating=3.0))
  want = _expected(rows, min_rating=3.0)
  assert _sequences(data) == want
  assert data.num_interactions == sum(r[RATING] >= 3.0 for r in rows)
  assert data.num_interactions < len(rows)
  fields = data.catalog.item_fields
  assert list(fields) == ["title", "genres"]  # column names, lower-cased
  for n, raw in enumerate(data.catalog.item_ids):
    i = int(raw[2:])
    assert fields["title"][n] == (_title(i) if i < N_TEXT else "")
  n = list(data.catalog.item_ids).index("tt0003")
  assert data.catalog.item_text(n) == f"{_title(3)}; genres: Drama|Comedy"
  assert "tt9999" not in data.catalog.item_ids


def test_without_timestamps_file_order_is_the_sequence(tmp_path):
  rows = _events(seed=2)
  path = _write_csv(
    tmp_path / "plays.csv", rows, {"user": USER, "movieId": ITEM}
  )
  data = load_dataset(_config("interactions", path))
  want = {}
  for user, item, _, _ in rows:
    want.setdefault(user, []).append(item)
  assert _sequences(data) == want


@pytest.mark.parametrize(
  "suffix,delimiter",
  [(".csv", ","), (".tsv", "\t"), (".txt", "\t"), (".dat", ";")],
)
def test_delimiter_is_sniffed_from_the_header(tmp_path, suffix, delimiter):
  path = tmp_path / f"events{suffix}"
  lines = ["user", "item"], ["u1", "a|1"], ["u1", "b"], ["u1", "c"]
  # A pipe inside a value is text: only the header decides the delimiter.
  path.write_text("".join(delimiter.join(f) + "\n" for f in lines))
  data = load_dataset(_config("interactions", path))
  assert _sequences(data) == {"u1": ["a|1", "b", "c"]}


def test_gzip_csv_with_byte_order_mark(tmp_path):
  path = tmp_path / "events.csv.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\ufeffUser_ID,Item_ID,Timestamp\n7,x,20\n7,y,10\n\n7,z,30\n")
  data = load_dataset(_config("interactions", path))
  assert _sequences(data) == {"7": ["y", "x", "z"]}


def test_split_of_an_interactions_file(tmp_path):
  rows = _events()
  path = _write_csv(tmp_path / "events.csv", rows)
  text = _write_item_text(tmp_path / "items.csv")
  config = _config("interactions", path, text, kcore=5)
  config.max_users = 25
  split = load_split(config)
  full = load_dataset(config)
  assert split.num_users == 25
  ids = split.catalog.item_ids
  for u in range(split.num_users):
    seq = _sequences(full)[str(split.catalog.user_ids[u])]
    # Leave-one-out: the last item is the test target, the one before
    # it validation.
    assert ids[split.test_items[u]] == seq[-1]
    assert ids[split.valid_items[u]] == seq[-2]
    assert [ids[i] for i in split.train_sequences[u]] == seq[:-2]
  assert split.catalog.item_fields["title"][list(ids).index("tt0001")] == (
    _title(1)
  )


def test_openp5_file_with_item_text(tmp_path):
  want = _expected(_events())
  path = _write_openp5(tmp_path / "user_sequence.txt", want)
  text = _write_item_text(tmp_path / "items.tsv", delimiter="\t")
  data = load_dataset(_config("openp5", path, text))
  assert _sequences(data) == want
  assert data.name == "openp5"
  assert data.num_interactions == sum(len(v) for v in want.values())
  n = list(data.catalog.item_ids).index("tt0002")
  assert data.catalog.item_fields["title"][n] == _title(2)
  # The default 5-core keeps everything here (every item has >= 9 users).
  split = load_split(_config("openp5", path, text, kcore=-1))
  ids = split.catalog.item_ids
  assert list(split.catalog.user_ids) == sorted(want)
  assert [ids[i] for i in split.test_items] == [
    want[u][-1] for u in sorted(want)
  ]


# Malformed input: every error names the file and the line.


def _error(tmp_path, name, content, **config):
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(ValueError) as info:
    load_dataset(_config("interactions", path, **config))
  return str(path), str(info.value)


def test_missing_column_lists_the_columns_found(tmp_path):
  path, msg = _error(tmp_path, "a.csv", "customer,item\nc1,i1\n")
  assert msg.startswith(f"{path}:1: no user column")
  assert "['customer', 'item']" in msg and "user_id" in msg


def test_row_with_wrong_number_of_fields(tmp_path):
  path, msg = _error(tmp_path, "a.csv", "user,item\nu1,i1\nu1,i2,extra\n")
  assert msg.startswith(f"{path}:3: expected 2 fields (user,item), found 3;")


def test_non_numeric_timestamp_and_rating(tmp_path):
  content = "user\titem\ttimestamp\nu1\ti1\t5\nu1\ti2\tyesterday\n"
  path, msg = _error(tmp_path, "a.tsv", content)
  assert msg.startswith(f"{path}:3: field 'timestamp' is not a finite number")
  assert "'yesterday'" in msg
  content = "user,item,rating\nu1,i1,4\nu1,i2,nan\n"
  path, msg = _error(tmp_path, "b.csv", content)
  assert msg.startswith(
    f"{path}:3: field 'rating' is not a finite number: 'nan';"
  )


def test_empty_and_header_only_files(tmp_path):
  path, msg = _error(tmp_path, "a.csv", "\n\n")
  assert msg.startswith(f"{path}: empty file: expected a header row")
  path, msg = _error(tmp_path, "b.csv", "user,item\n")
  assert msg.startswith(f"{path}: no interactions after the header;")


def test_empty_id_and_ratings_filtered_away(tmp_path):
  path, msg = _error(tmp_path, "a.csv", "user,item\nu1,i1\n,i2\n")
  assert msg.startswith(f"{path}:3: empty 'user' value;")
  content = "user,item,rating\nu1,i1,1\nu2,i1,2\n"
  path, msg = _error(tmp_path, "b.csv", content, min_rating=4.0)
  assert msg.startswith(f"{path}: no interaction is rated >= min_rating=4.0;")
  path, msg = _error(tmp_path, "c.csv", "user,item\nu1,i1\n", min_rating=4.0)
  assert msg.startswith(f"{path}:1: min_rating=4.0 needs a rating column")


def test_too_small_for_the_k_core_says_so(tmp_path):
  path, msg = _error(tmp_path, "a.csv", "user,item\nu1,i1\nu1,i2\n", kcore=5)
  assert msg.startswith(f"{path}: ") and "lower dataset.kcore" in msg


def test_user_too_short_for_leave_one_out_names_the_file(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("user,item\nu1,i1\nu1,i2\nu1,i3\nu2,i1\nu2,i2\n")
  with pytest.raises(ValueError) as info:
    load_split(_config("interactions", path, kcore=0))
  assert str(info.value).startswith(f"{path}: interactions: user 'u2' has 2")


def test_item_text_errors_name_the_text_file(tmp_path):
  events = _write_csv(tmp_path / "events.csv", _events())
  text = tmp_path / "items.csv"
  text.write_text('item,title\ntt0001,"A, B"\ntt0002,C\ntt0001,D\n')
  with pytest.raises(
    ValueError, match=rf"^{re.escape(str(text))}:4: item 'tt0001' repeated"
  ):
    load_dataset(_config("interactions", events, text))
  text.write_text("item\ntt0001\n")
  with pytest.raises(
    ValueError, match=rf"^{re.escape(str(text))}:1: expected an item column"
  ):
    load_dataset(_config("interactions", events, text))


def test_openp5_errors(tmp_path):
  path = tmp_path / "user_sequence.txt"
  path.write_text("1 2 3\n2\n")
  with pytest.raises(
    DataFormatError, match=rf"^{re.escape(str(path))}:2: a user line"
  ):
    load_dataset(_config("openp5", path))
  path.write_text("1 2 3\n1 4 5\n")
  with pytest.raises(
    DataFormatError, match=rf"^{re.escape(str(path))}:2: user '1' appears"
  ):
    load_dataset(_config("openp5", path))


def test_config_mistakes(tmp_path):
  with pytest.raises(ValueError, match="set dataset.path"):
    load_dataset(_config("interactions", ""))
  with pytest.raises(FileNotFoundError, match="nope.csv: no such data file"):
    load_dataset(_config("interactions", tmp_path / "nope.csv"))
  with pytest.raises(ValueError, match="item_text is read only by"):
    load_dataset(_config("ml-latest-small", "", tmp_path / "items.csv"))


# The whole pipeline on a user's files.


def _default_config(variant):
  path = REPO_ROOT / "configs" / "default.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _tiny_pipeline_config(name, path, item_text, bert_dir):
  c = _default_config("small")
  c.dataset.name, c.dataset.path = name, str(path)
  c.dataset.item_text, c.dataset.kcore = str(item_text), 5
  # Seconds, not minutes (compiles dominate on 2 cores): a tiny random
  # Q-Former and LLM (as tests/test_stage1.py and tests/test_stage2.py), a
  # few steps of each stage, few evaluated users.
  c.qformer.bert_path = str(bert_dir)
  c.qformer.embed_dim = 8
  s1, s2 = c.stage1, c.stage2
  s1.batch_size = 8  # one row per fake device
  s1.train.num_steps = s1.train.checkpoint_every = 4
  s1.train.warmup_steps = 1
  s1.train.progress_bar = False
  # Held-out accuracy samples its negatives from the catalog (< 100 items).
  s1.eval.candidates = 10
  s2.llm = "tiny"
  s2.length_buckets = (256,)  # character tokens; one bucket, one compile
  s2.train.num_steps = s2.train.checkpoint_every = 3
  s2.train.warmup_steps = 1
  s2.train.progress_bar = False
  s2.examples_per_task = 16
  s2.rerank.examples_per_task = 16
  s2.eval.max_users = 4
  s2.eval.max_text_prompts = 4
  s2.rerank.max_users = 6
  return c


def _numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


@pytest.mark.slow
@pytest.mark.parametrize(
  # The OpenP5 run repeats the pipeline on another parser (fuzzed in
  # tests/test_drills.py): heavy.
  "name",
  ["interactions", pytest.param("openp5", marks=pytest.mark.heavy)],
)
def test_small_pipeline_runs_on_user_files(tmp_path, name):
  from ilm_jax.pipeline import run as pipeline

  rows = _events()
  if name == "interactions":
    path = _write_csv(tmp_path / "events.csv", rows)
  else:
    path = _write_openp5(tmp_path / "user_sequence.txt", _expected(rows))
  text = _write_item_text(tmp_path / "items.csv")
  config = _tiny_pipeline_config(
    name, path, text, tiny_bert_dir(tmp_path / "bert", 32)
  )
  start, cpu = time.perf_counter(), time.process_time()
  results = pipeline.run(config, tmp_path / "work", "all")
  print(
    f"{name}: pipeline took {time.perf_counter() - start:.1f} s wall, "
    f"{time.process_time() - cpu:.1f} s CPU"
  )
  assert set(results) >= {"cf", "eval", "stage1", "stage2"}
  split = load_split(config.dataset)
  assert results["cf"]["rows"] == split.num_users + split.num_items
  numbers = list(_numbers(results))
  assert len(numbers) > 20 and all(map(math.isfinite, numbers))
  assert np.isfinite(results["stage1"]["loss"])
