"""MovieLens parsers: latest-small (zip), 100K (u.*) and 1M (*.dat / csv.gz)."""

from __future__ import annotations

import pathlib
from collections import Counter, defaultdict

import numpy as np

from ilm_jax.data import dataset as ds
from ilm_jax.data.text_files import csv_rows, split_lines

LATEST_SMALL_PREFIX = "ml-latest-small/"
# u.genre order of the 19 genre flags in ML-100K's u.item.
ML100K_GENRES = (
  "unknown",
  "Action",
  "Adventure",
  "Animation",
  "Children's",
  "Comedy",
  "Crime",
  "Documentary",
  "Drama",
  "Fantasy",
  "Film-Noir",
  "Horror",
  "Musical",
  "Mystery",
  "Romance",
  "Sci-Fi",
  "Thriller",
  "War",
  "Western",
)
MAX_TAGS_PER_ITEM = 8


def _int(path, line_no, value: str, field: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ds.DataFormatError(
      path, line_no, f"field {field!r} is not an integer: {value!r}"
    ) from None


def _float(path, line_no, value: str, field: str) -> float:
  try:
    return float(value)
  except ValueError:
    raise ds.DataFormatError(
      path, line_no, f"field {field!r} is not a number: {value!r}"
    ) from None


def _expect(path, line_no, fields, n: int, layout: str):
  if len(fields) != n:
    raise ds.DataFormatError(
      path, line_no, f"expected {n} fields ({layout}), found {len(fields)}"
    )


def _ratings(rows, path, layout, n_fields, has_time, min_rating):
  users, items, keys = [], [], []
  for position, (line_no, f) in enumerate(rows):
    _expect(path, line_no, f, n_fields, layout)
    rating = _float(path, line_no, f[2], "rating")
    user = _int(path, line_no, f[0], "user")
    item = _int(path, line_no, f[1], "item")
    key = _int(path, line_no, f[3], "timestamp") if has_time else position
    if rating >= min_rating:
      users.append(user)
      items.append(item)
      keys.append(key)
  if not users:
    raise ds.DataFormatError(path, None, "no ratings found")
  return np.array(users), np.array(items), np.array(keys, dtype=np.int64)


def load_latest_small(zip_path: str | pathlib.Path, min_rating: float = 0.0):
  """MovieLens latest-small from the official GroupLens zip.

  Item text: title (with year), genres, and the most frequent free-text tags.
  Tag events are kept on the dataset so a split can drop tags a user gave to
  their own held-out items.
  """
  name, rows = csv_rows(zip_path, LATEST_SMALL_PREFIX + "ratings.csv")
  users, items, keys = _ratings(
    rows, name, "userId,movieId,rating,timestamp", 4, True, min_rating
  )
  movie_ids, titles, genres = [], [], []
  name, rows = csv_rows(zip_path, LATEST_SMALL_PREFIX + "movies.csv")
  for line_no, f in rows:
    _expect(name, line_no, f, 3, "movieId,title,genres")
    movie_ids.append(_int(name, line_no, f[0], "movieId"))
    titles.append(f[1].strip())
    g = f[2].strip()
    genres.append("" if g == "(no genres listed)" else g.replace("|", ", "))
  tag_user, tag_item, tag_text = [], [], []
  name, rows = csv_rows(zip_path, LATEST_SMALL_PREFIX + "tags.csv")
  for line_no, f in rows:
    _expect(name, line_no, f, 4, "userId,movieId,tag,timestamp")
    tag_user.append(str(_int(name, line_no, f[0], "userId")))
    tag_item.append(str(_int(name, line_no, f[1], "movieId")))
    tag_text.append(f[2].strip().lower())
  data = ds.from_events(
    "ml-latest-small",
    users,
    items,
    keys,
    item_catalog_ids=np.array(movie_ids),
    item_fields={"title": titles, "genres": genres},
  )
  return attach_tags(data, tag_user, tag_item, tag_text)


def attach_tags(data: ds.Dataset, tag_user, tag_item, tag_text) -> ds.Dataset:
  """Stores tag events (raw ids) and the catalog's aggregated "tags" field."""
  user_pos = {u: i for i, u in enumerate(data.catalog.user_ids)}
  item_pos = {m: i for i, m in enumerate(data.catalog.item_ids)}
  events = [
    (user_pos[u], item_pos[m], t)
    for u, m, t in zip(tag_user, tag_item, tag_text)
    if u in user_pos and m in item_pos and t
  ]
  tag_events = (
    np.array([e[0] for e in events], dtype=np.int32),
    np.array([e[1] for e in events], dtype=np.int32),
    np.array([e[2] for e in events], dtype=object),
  )
  fields = dict(data.catalog.item_fields)
  fields["tags"] = aggregate_tags(data.catalog.num_items, *tag_events)
  catalog = ds.Catalog(data.catalog.item_ids, data.catalog.user_ids, fields)
  return ds.Dataset(data.name, catalog, data.sequences, tag_events=tag_events)


def aggregate_tags(num_items: int, users, items, tags, keep=None) -> np.ndarray:
  """Per item, its most frequent tags joined by ", " (str[num_items]).

  Args:
    num_items: number of items.
    users, items, tags: tag events (user index, item index, text).
    keep: optional bool[N] mask of events to use.
  """
  counts: dict[int, Counter] = defaultdict(Counter)
  for n, (item, tag) in enumerate(zip(items, tags)):
    if keep is None or keep[n]:
      counts[int(item)][tag] += 1
  out = np.full(num_items, "", dtype=object)
  for item, c in counts.items():
    # Ties broken alphabetically so the text is deterministic.
    top = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS_PER_ITEM]
    out[item] = ", ".join(t for t, _ in top)
  return out.astype(str)


def load_ml100k(directory: str | pathlib.Path, min_rating: float = 0.0):
  """MovieLens-100K from GroupLens' ``u.data`` and ``u.item``."""
  directory = pathlib.Path(directory)
  path = directory / "u.data"
  users, items, keys = _ratings(
    split_lines(path, "\t"),
    path,
    "user item rating timestamp",
    4,
    True,
    min_rating,
  )
  ids, titles, genres = read_ml100k_items(directory / "u.item")
  return ds.from_events(
    "ml-100k",
    users,
    items,
    keys,
    item_catalog_ids=ids,
    item_fields={"title": titles, "genres": genres},
  )


def read_ml100k_items(path: str | pathlib.Path):
  """``u.item``: (movie ids, "Title (year)", "Genre, Genre") per movie."""
  ids, titles, genres = [], [], []
  for line_no, f in split_lines(path, "|", encoding="latin-1"):
    _expect(
      path,
      line_no,
      f,
      5 + len(ML100K_GENRES),
      "id|title|date|video|url|19 genre flags",
    )
    ids.append(_int(path, line_no, f[0], "movie id"))
    titles.append(f[1].strip())
    flags = f[5:]
    if any(x not in ("0", "1") for x in flags):
      raise ds.DataFormatError(path, line_no, "genre flags must be 0 or 1")
    genres.append(
      ", ".join(g for g, x in zip(ML100K_GENRES, flags) if x == "1")
    )
  return np.array(ids), titles, genres


def load_ml1m(directory: str | pathlib.Path, min_rating: float = 0.0):
  """MovieLens-1M: ``ratings.dat`` + ``movies.dat`` when present, else the
  time-less ``ratings_no_time.csv.gz`` (file order stands in for time and no
  text is joined, since its item ids are renumbered)."""
  directory = pathlib.Path(directory)
  dat = directory / "ratings.dat"
  if dat.exists():
    users, items, keys = _ratings(
      split_lines(dat, "::", encoding="latin-1"),
      dat,
      "UserID::MovieID::Rating::Timestamp",
      4,
      True,
      min_rating,
    )
    ids, titles, genres = [], [], []
    movies = directory / "movies.dat"
    for line_no, f in split_lines(movies, "::", encoding="latin-1"):
      _expect(movies, line_no, f, 3, "MovieID::Title::Genres")
      ids.append(_int(movies, line_no, f[0], "MovieID"))
      titles.append(f[1].strip())
      genres.append(f[2].strip().replace("|", ", "))
    return ds.from_events(
      "ml-1m",
      users,
      items,
      keys,
      item_catalog_ids=np.array(ids),
      item_fields={"title": titles, "genres": genres},
    )
  csv_path = directory / "ratings_no_time.csv.gz"
  name, rows = csv_rows(csv_path)
  users, items, keys = _ratings(
    rows, name, "user,item,rating", 3, False, min_rating
  )
  return ds.from_events("ml-1m", users, items, keys)
