"""Parsers never guess: every malformed input is an error at file:line."""

import gzip
import re
import zipfile

import numpy as np
import pytest

from ilm_jax.data import DataFormatError, movielens, openp5
from ilm_jax.data.interactions import load_interactions
from ilm_jax.data.registry import EMBEDDED_LATEST_SMALL

RATINGS_HEADER = "userId,movieId,rating,timestamp\n"
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat,Drama\n"
TAGS = "userId,movieId,tag,timestamp\n"


def _zip(path, ratings, movies=MOVIES, tags=TAGS):
  with zipfile.ZipFile(path, "w") as zf:
    for name, text in (
      ("ratings.csv", ratings),
      ("movies.csv", movies),
      ("tags.csv", tags),
    ):
      data = text if isinstance(text, bytes) else text.encode()
      zf.writestr(movielens.LATEST_SMALL_PREFIX + name, data)
  return path


def _rejects(load, where: str, what: str):
  """``load()`` raises an error starting with ``where: `` holding ``what``."""
  with pytest.raises(DataFormatError) as info:
    load()
  message = str(info.value)
  assert message.startswith(where + ": "), message
  assert re.search(what, message), message
  # Every message says what to do after what is wrong.
  assert "; " in message[len(where) :], message


@pytest.mark.parametrize(
  "value,what",
  [
    ("-1", "not a decimal id"),
    ("+1", "not a decimal id"),
    ("1_0", "not a decimal id"),
    (" 1", "not a decimal id"),
    ("1 0", "not a decimal id"),
    ("\u0661", "not a decimal id"),  # an Arabic-Indic digit
    ("1.0", "not a decimal id"),
    ("", "empty 'user'"),
    ("9" * 65, "65 characters long"),
  ],
)
def test_movielens_ids_are_decimal_digits(tmp_path, value, what):
  path = _zip(tmp_path / "ml.zip", RATINGS_HEADER + f"{value},1,4.0,5\n")
  name = f"{path}:ml-latest-small/ratings.csv"
  _rejects(lambda: movielens.load_latest_small(path), f"{name}:2", what)


@pytest.mark.parametrize(
  "rating", ["nan", "inf", "-1", "0", "5.5", "4.25", "1e0", "4_0", "+4"]
)
def test_latest_small_ratings_finite_and_in_range(tmp_path, rating):
  path = _zip(tmp_path / "ml.zip", RATINGS_HEADER + f"1,1,{rating},5\n")
  name = f"{path}:ml-latest-small/ratings.csv"
  _rejects(lambda: movielens.load_latest_small(path), f"{name}:2", "rating")


def test_ml100k_ratings_are_whole_stars_and_timestamps_fit_int64(tmp_path):
  (tmp_path / "u.item").write_text("1|A (1995)|x||u|" + "|".join("0" * 19))
  data = tmp_path / "u.data"
  data.write_text("1\t1\t3.5\t881250949\n")
  _rejects(lambda: movielens.load_ml100k(tmp_path), f"{data}:1", "range")
  data.write_text("1\t1\t3\t99999999999999999999\n")
  _rejects(lambda: movielens.load_ml100k(tmp_path), f"{data}:1", "timestamp")


def test_ids_beyond_64_bits_load_exactly(tmp_path):
  huge = "123456789012345678901234567890"
  path = _zip(
    tmp_path / "ml.zip",
    RATINGS_HEADER + f"{huge},1,4.0,5\n7,2,3.0,6\n007,1,5,7\n",
  )
  data = movielens.load_latest_small(path)
  # Numeric order; "007" is user 7.
  assert list(data.catalog.user_ids) == ["7", huge]
  assert data.stats() == {"users": 2, "items": 2, "interactions": 3}


def test_duplicate_catalogue_ids_name_both_lines(tmp_path):
  movies = MOVIES + "1,Toy Story again,Comedy\n"
  path = _zip(tmp_path / "ml.zip", RATINGS_HEADER + "1,1,4.0,5\n", movies)
  _rejects(
    lambda: movielens.load_latest_small(path),
    f"{path}:ml-latest-small/movies.csv:4",
    r"movie 1 listed twice \(lines 2 and 4\)",
  )
  text = tmp_path / "item_short_text.txt"
  text.write_text("B1 red lipstick\nB2 soap\nB1 blue\n")
  _rejects(lambda: openp5.read_short_text(text), f"{text}:3", "lines 1 and 3")


def test_empty_item_text_files_are_rejected(tmp_path):
  text = tmp_path / "item_short_text.txt"
  text.write_text("")
  _rejects(lambda: openp5.read_short_text(text), str(text), "no items")
  path = _zip(tmp_path / "ml.zip", RATINGS_HEADER + "1,1,4.0,5\n", "")
  _rejects(
    lambda: movielens.load_latest_small(path),
    f"{path}:ml-latest-small/movies.csv:1",
    "expected the header",
  )


@pytest.mark.parametrize(
  "raw,what",
  [
    (b"U1 \x00I1\n", "U\\+0000"),
    (b"U1 I\xef\xbb\xbf1\n", "byte-order mark"),
    (b"U1 I1\rU2 I2\n", "U\\+000D"),
    (b"U1 I\xff1\n", "not valid utf-8"),
    (b"U1 I1\xc2\xa0I2\n", "invisible|whitespace"),  # a no-break space
  ],
)
def test_bad_bytes_are_named_by_line(tmp_path, raw, what):
  path = tmp_path / "user_sequence.txt"
  path.write_bytes(b"U0 I0 I1\n" + raw)
  _rejects(lambda: openp5.read_user_sequences(path), f"{path}:2", what)


def test_leading_byte_order_mark_and_crlf_are_fine(tmp_path):
  path = tmp_path / "user_sequence.txt"
  path.write_bytes(b"\xef\xbb\xbfU0 I0 I1\r\nU1 I1\r\n")
  assert openp5.read_user_sequences(path) == {"U0": ["I0", "I1"], "U1": ["I1"]}


def test_string_ids_are_bounded_and_printable(tmp_path):
  path = tmp_path / "events.csv"
  path.write_text("user,item\nu1,i1\nu2," + "x" * 65 + "\n")
  _rejects(lambda: load_interactions(path), f"{path}:3", "65 characters")
  # A 200,000-character id in a 200 kB file: rejected, not 1.5 GB of memory.
  path.write_text("user,item\nu1," + "7" * 200_000 + "\n")
  _rejects(lambda: load_interactions(path), f"{path}:2", "field limit")
  # Signs and underscores are part of a string id, kept as written.
  path.write_text("user,item\n-1,1_0\n+1,1_0\n")
  data = load_interactions(path)
  assert sorted(data.catalog.user_ids) == ["+1", "-1"]
  assert list(data.catalog.item_ids) == ["1_0"]


def test_missing_extra_columns_and_wrong_separator(tmp_path):
  path = tmp_path / "u.data"
  (tmp_path / "u.item").write_text("1|A (1995)|x||u|" + "|".join("0" * 19))
  for body, line in (
    ("1\t1\t3\n", 1),  # missing timestamp
    ("1\t1\t3\t5\t9\n", 1),  # extra column
    ("1\t1\t3\t5\n1,1,3,5\n", 2),  # commas
  ):
    path.write_text(body)
    _rejects(
      lambda: movielens.load_ml100k(tmp_path), f"{path}:{line}", "fields"
    )


def test_damaged_archives_name_the_file(tmp_path):
  path = _zip(tmp_path / "ml.zip", RATINGS_HEADER + "1,1,4.0,5\n" * 50)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  _rejects(lambda: movielens.load_latest_small(path), str(path), "zip")
  gz = tmp_path / "ratings_no_time.csv.gz"
  body = gzip.compress(b"user,item,rating\n" + b"1,1,4\n" * 1000)
  gz.write_bytes(body[:-20])
  with pytest.raises(DataFormatError, match=rf"^{re.escape(str(gz))}:\d+: "):
    movielens.load_ml1m(tmp_path)


def test_headerless_movielens_csv_is_not_read_as_data(tmp_path):
  path = _zip(tmp_path / "ml.zip", "1,1,4.0,5\n2,1,3.0,6\n")
  _rejects(
    lambda: movielens.load_latest_small(path),
    f"{path}:ml-latest-small/ratings.csv:1",
    "expected the header userId,movieId,rating,timestamp",
  )


def test_shipped_latest_small_loads_as_before():
  data = movielens.load_latest_small(EMBEDDED_LATEST_SMALL)
  assert data.stats() == {"users": 610, "items": 9724, "interactions": 100836}
  assert data.catalog.item_ids.dtype.itemsize <= 4 * 64
  titled = np.sum(data.catalog.item_fields["title"] != "")
  assert titled == 9724
  assert len(data.tag_events[0]) == 3662  # as before the hardening
