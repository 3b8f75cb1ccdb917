"""MovieLens parsers: latest-small (zip), 100K (u.*) and 1M (*.dat / csv.gz).

Ids are decimal digits (kept exact as strings, however long), ratings lie in
each file's published range and steps, a catalogue lists each movie once,
and CSV files start with their documented header (a missing header would
otherwise swallow the first row). Anything else names its file and line.
"""

from __future__ import annotations

import pathlib
from collections import Counter, defaultdict

import numpy as np

from ilm_jax.data import dataset as ds
from ilm_jax.data import fields as fv
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
# (low, high, step) of each file's ratings.
LATEST_SMALL_RATINGS = (0.5, 5.0, 0.5)
ML_RATINGS = (1.0, 5.0, 1.0)


def _id(path, line_no, value: str, field: str) -> str:
  return fv.decimal_id(path, line_no, value, field)


def _expect(path, line_no, fields, n: int, layout: str):
  if len(fields) != n:
    raise ds.DataFormatError(
      path,
      line_no,
      f"expected {n} fields ({layout}), found {len(fields)}; fix or drop "
      "the line",
    )


def _ratings(rows, path, layout, n_fields, has_time, min_rating, scale):
  """(user ids, item ids, int64 keys) of the ratings >= min_rating."""
  users, items, keys = [], [], []
  for position, (line_no, f) in enumerate(rows):
    _expect(path, line_no, f, n_fields, layout)
    user = _id(path, line_no, f[0], "user")
    item = _id(path, line_no, f[1], "item")
    rating = fv.rating(path, line_no, f[2], *scale)
    key = fv.timestamp(path, line_no, f[3]) if has_time else position
    if rating >= min_rating:
      users.append(user)
      items.append(item)
      keys.append(key)
  if not users:
    raise ds.DataFormatError(
      path, None, "no ratings found; is this the right file?"
    )
  return users, items, np.array(keys, dtype=np.int64)


class _Catalogue:
  """Movie ids, titles and genres, each movie listed once."""

  def __init__(self, path):
    self.path = path
    self.ids, self.titles, self.genres = [], [], []
    self.line_of: dict[str, int] = {}

  def add(self, line_no, raw_id, field, title, genres):
    movie = _id(self.path, line_no, raw_id, field)
    if movie in self.line_of:
      raise ds.DataFormatError(
        self.path,
        line_no,
        f"movie {movie} listed twice (lines {self.line_of[movie]} and "
        f"{line_no}); keep one of them",
      )
    self.line_of[movie] = line_no
    self.ids.append(movie)
    self.titles.append(title)
    self.genres.append(genres)

  def done(self):
    if not self.ids:
      raise ds.DataFormatError(
        self.path, None, "no movies listed; is this the right file?"
      )
    return self.ids, self.titles, self.genres


def load_latest_small(zip_path: str | pathlib.Path, min_rating: float = 0.0):
  """MovieLens latest-small from the official GroupLens zip.

  Item text: title (with year), genres, and the most frequent free-text tags.
  Tag events are kept on the dataset so a split can drop tags a user gave to
  their own held-out items.
  """
  layout = "userId,movieId,rating,timestamp"
  name, rows = csv_rows(
    zip_path, LATEST_SMALL_PREFIX + "ratings.csv", layout.split(",")
  )
  users, items, keys = _ratings(
    rows, name, layout, 4, True, min_rating, LATEST_SMALL_RATINGS
  )
  layout = "movieId,title,genres"
  name, rows = csv_rows(
    zip_path, LATEST_SMALL_PREFIX + "movies.csv", layout.split(",")
  )
  movies = _Catalogue(name)
  for line_no, f in rows:
    _expect(name, line_no, f, 3, layout)
    g = f[2].strip()
    g = "" if g == "(no genres listed)" else g.replace("|", ", ")
    movies.add(line_no, f[0], "movieId", f[1].strip(), g)
  movie_ids, titles, genres = movies.done()
  tag_user, tag_item, tag_text = [], [], []
  layout = "userId,movieId,tag,timestamp"
  name, rows = csv_rows(
    zip_path, LATEST_SMALL_PREFIX + "tags.csv", layout.split(",")
  )
  for line_no, f in rows:
    _expect(name, line_no, f, 4, layout)
    tag_user.append(_id(name, line_no, f[0], "userId"))
    tag_item.append(_id(name, line_no, f[1], "movieId"))
    fv.timestamp(name, line_no, f[3])
    tag_text.append(f[2].strip().lower())
  data = ds.from_events(
    "ml-latest-small",
    users,
    items,
    keys,
    item_catalog_ids=movie_ids,
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
    ML_RATINGS,
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
  movies = _Catalogue(path)
  for line_no, f in split_lines(path, "|", encoding="latin-1"):
    _expect(
      path,
      line_no,
      f,
      5 + len(ML100K_GENRES),
      "id|title|date|video|url|19 genre flags",
    )
    flags = f[5:]
    if any(x not in ("0", "1") for x in flags):
      raise ds.DataFormatError(
        path, line_no, "genre flags must be 0 or 1; fix the line"
      )
    genres = ", ".join(g for g, x in zip(ML100K_GENRES, flags) if x == "1")
    movies.add(line_no, f[0], "movie id", f[1].strip(), genres)
  ids, titles, genres = movies.done()
  return np.array(ids, dtype=str), titles, genres


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
      ML_RATINGS,
    )
    path = directory / "movies.dat"
    movies = _Catalogue(path)
    for line_no, f in split_lines(path, "::", encoding="latin-1"):
      _expect(path, line_no, f, 3, "MovieID::Title::Genres")
      genres = f[2].strip().replace("|", ", ")
      movies.add(line_no, f[0], "MovieID", f[1].strip(), genres)
    ids, titles, genres = movies.done()
    return ds.from_events(
      "ml-1m",
      users,
      items,
      keys,
      item_catalog_ids=ids,
      item_fields={"title": titles, "genres": genres},
    )
  csv_path = directory / "ratings_no_time.csv.gz"
  name, rows = csv_rows(csv_path, header=["user", "item", "rating"])
  users, items, keys = _ratings(
    rows, name, "user,item,rating", 3, False, min_rating, ML_RATINGS
  )
  return ds.from_events("ml-1m", users, items, keys)
