"""Parser fuzzing: malformed and well-formed variants of every text format.

Each case starts from a small random, well-formed dataset in one of the
formats the parsers read (a user's interactions CSV/TSV and item-text file,
OpenP5 user sequences and short item text, MovieLens latest-small's zip,
ML-100K's ``u.data``/``u.item``, ML-1M's ``.dat`` files and its gzip CSV),
applies one mutation, writes the files and loads them with the real loader.
The fuzzer builds the data as rows of typed fields, so it knows whether a
mutation made the input malformed and, for well-formed input, which users,
items and interactions the loader must report (its own small oracle).

Outcomes (``table.DrillRow``): ``rejected_with_location`` (malformed,
error naming the file and, for a defect on a line, that line),
``accepted_valid`` (well-formed, loaded with the expected counts), and the
defects ``silently_accepted``, ``error_without_location``,
``crash_on_valid``, ``results_differ`` (well-formed, wrong counts),
``too_slow`` and ``too_much_memory``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import pathlib
import random
import shutil
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable

from ilm_jax.data import interactions, movielens, openp5
from ilm_jax.drills.table import DrillRow

TIME_LIMIT_S = 5.0
# Peak traced memory allowed per case: this many times the bytes written,
# plus a fixed allowance for the loader's own bookkeeping.
MEMORY_FACTOR = 32
MEMORY_ALLOWANCE = 8 << 20
# Stands for raw bytes spliced in after encoding (invalid UTF-8, C1...).
_RAW = "\ue000"

# Field kinds and the values a mutation may put there: (malformed, fine).
# "{n}" is a fresh number, "{s}" a fresh string id.
_HUGE = "123456789012345678901234567890"  # beyond 64 bits
_VALUES = {
  "did": (
    [
      "-{n}",
      "+{n}",
      "1_{n}",
      "1 {n}",
      "{n}\x00",
      "{n}\ufeff",
      "{n}.0",
      "1e3",
      "",
      "x{n}",
      "\u0661\u0662",
      "9" * 65,
      "{n}\u00a0",
      " {n}",
    ],
    [_HUGE + "{n}", "000{n}"],
  ),
  "sid": (
    [
      "",
      "{s} x",
      "{s}\x00",
      "{s}\ufeffx",
      "{s}\u00a0x",
      "{s}\x0bx",
      "{s}\u200bx",
      "y" * 65,
    ],
    [
      "-{n}",
      "1_0{n}",
      "+{n}",
      "z{n}" + "z" * 56,
      _HUGE + "{n}",
      "caf\u00e9{n}",
    ],
  ),
  "rating_ls": (
    ["nan", "inf", "-1", "0", "5.5", "6", "4.25", "1e0", "4_0", "+4", "", "x"],
    ["0.5", "5", "5.0", "3.5", "4.00"],
  ),
  "rating_ml": (
    ["nan", "inf", "-1", "0", "6", "3.5", "1e0", "4_0", "+4", "", " 4"],
    ["1", "5", "4.0"],
  ),
  "rating_user": (
    ["nan", "inf", "-inf", "1_0", "+5", "", "x", "4,5"],
    ["3.5", "1e1", "-1", "0", " 4 "],
  ),
  "time_ml": (
    ["-1", "1.5", "1e9", "99999999999999999999", "nan", "", "1_000", "+5"],
    ["0", "0964982703", "9223372036854775807"],
  ),
  "time_user": (
    ["nan", "inf", "1e999", "1_0", "+5", "", "x", "0x10"],
    ["-5", "1.5", "1.6e9", " 7 "],
  ),
  "text": (
    ["{s}\x00", "{s}\x0b", "{s}\ufeffx", "{s}" + _RAW, "{s}\rx"],
    ["Am\u00e9lie (2001)", "", "{s} und {s}", "x" * 5000],
  ),
  "flag": (["2", "x", "", " 1", "01"], ["0", "1"]),
}
# Non-Latin text for the UTF-8 formats only.
_UTF8_ONLY_FINE = {"text": ["\u6771\u4eac\u7269\u8a9e", "\U0001f3ac night"]}
_RAW_BYTES = {"utf-8": b"\xff\xfe", "latin-1": b"\x85"}


@dataclasses.dataclass
class Table:
  """One data file as typed rows.

  Attributes:
    name: file name (a member name inside an archive).
    kinds: the field kind of each column (keys of ``_VALUES``).
    rows: the data rows as strings, one list per line ([] = a blank line).
    sep: field separator (" " = runs of spaces and tabs).
    csv: whether values follow CSV quoting.
    header: the header row, or None.
    encoding: the file's encoding.
    min_fields: rows may hold more fields than ``kinds`` (OpenP5 lines).
    unique: the column that must not repeat, or None.
  """

  name: str
  kinds: list[str]
  rows: list[list[str]]
  sep: str
  csv: bool = False
  header: list[str] | None = None
  encoding: str = "utf-8"
  min_fields: int | None = None
  unique: int | None = None

  def row_line(self, i: int) -> int:
    return i + 1 + (self.header is not None)


@dataclasses.dataclass
class Case:
  """A dataset in one format, mutated or not."""

  fmt: Format
  tables: dict[str, Table]
  malformed: bool = False
  where: tuple[str, int | None] | None = None  # (file, line) of the defect
  family: str = "valid"
  raw: dict[str, bytes] = dataclasses.field(default_factory=dict)
  archive_damage: Callable[[pathlib.Path], None] | None = None
  measure_memory: bool = False


@dataclasses.dataclass
class Format:
  """How to build, write, load and check one format.

  Attributes:
    name: as shown in the drill table.
    build: rng -> {file name: Table}, well-formed.
    write: (directory, {file name: bytes}) -> {file name: display path in
      errors}; also writes archives.
    load: directory -> Dataset.
    oracle: tables -> the stats the loader must report.
    text_field: the catalogue field counted as "titled", or None.
    archive: the archive file the tables live in, or None.
  """

  name: str
  build: Callable[[random.Random], dict[str, Table]]
  write: Callable[[pathlib.Path, dict[str, bytes]], dict[str, str]]
  load: Callable[[pathlib.Path], object]
  oracle: Callable[[dict[str, Table]], dict]
  text_field: str | None = None
  archive: str | None = None


# ---------------------------------------------------------------- builders


def _fresh(rng: random.Random) -> int:
  return rng.randrange(10**6, 10**7)


def _events(rng, n_users, n_items, decimal: bool):
  """(user, item) pairs: every user rates a few distinct items."""
  users = [str(u + 1) if decimal else f"U{u:03d}" for u in range(n_users)]
  items = [str(i + 1) if decimal else f"I{i:04d}" for i in range(n_items)]
  out = []
  for user in users:
    for item in rng.sample(items, rng.randint(1, min(6, n_items))):
      out.append((user, item))
  rng.shuffle(out)
  return out, items


def _word(rng) -> str:
  return "".join(
    rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 8))
  )


def _title(rng) -> str:
  return " ".join(_word(rng) for _ in range(rng.randint(1, 3)))


def _ls_rating(rng) -> str:
  return f"{rng.randint(1, 10) / 2:.1f}"


def _time(rng) -> str:
  return str(rng.randint(900_000_000, 1_600_000_000))


def _build_interactions(rng):
  pairs, items = _events(rng, rng.randint(3, 8), rng.randint(4, 12), False)
  suffix, sep = rng.choice([(".csv", ","), (".tsv", "\t"), (".txt", ";")])
  header = [
    rng.choice(interactions.USER_COLUMNS),
    rng.choice(("item", "item_id", "itemId")),
    "timestamp",
    "rating",
  ]
  rows = [[u, i, _time(rng), _ls_rating(rng)] for u, i in pairs]
  kinds = ["sid", "sid", "time_user", "rating_user"]
  text = Table(
    "items.csv",
    ["sid", "text", "text"],
    [[i, _title(rng), _word(rng)] for i in items if rng.random() < 0.8]
    or [[items[0], "t", "g"]],
    ",",
    csv=True,
    header=["item_id", "title", "genres"],
    unique=0,
  )
  return {
    "events": Table(
      "events" + suffix, kinds, rows, sep, csv=True, header=header
    ),
    "items": text,
  }


def _build_openp5(rng):
  n_users = rng.randint(3, 8)
  items = [f"B{rng.randrange(16**6):06X}" for _ in range(rng.randint(4, 12))]
  rows = [
    [f"A{u:04d}"] + [rng.choice(items) for _ in range(rng.randint(1, 6))]
    for u in range(n_users)
  ]
  seq = Table(
    "user_sequence.txt", ["sid", "sid"], rows, " ", min_fields=2, unique=0
  )
  text = Table(
    "item_short_text.txt",
    ["sid", "text"],
    [[i] + _title(rng).split() for i in sorted(set(items))],
    " ",
    min_fields=1,
    unique=0,
  )
  return {"seq": seq, "text": text}


def _build_latest_small(rng):
  pairs, items = _events(rng, rng.randint(3, 8), rng.randint(4, 12), True)
  ratings = Table(
    "ratings.csv",
    ["did", "did", "rating_ls", "time_ml"],
    [[u, i, _ls_rating(rng), _time(rng)] for u, i in pairs],
    ",",
    csv=True,
    header=["userId", "movieId", "rating", "timestamp"],
  )
  movies = Table(
    "movies.csv",
    ["did", "text", "text"],
    [[i, f"{_title(rng)} (1999)", "Drama|Comedy"] for i in items],
    ",",
    csv=True,
    header=["movieId", "title", "genres"],
    unique=0,
  )
  tags = Table(
    "tags.csv",
    ["did", "did", "text", "time_ml"],
    [[u, i, _word(rng), _time(rng)] for u, i in pairs[: rng.randint(0, 5)]],
    ",",
    csv=True,
    header=["userId", "movieId", "tag", "timestamp"],
  )
  return {"ratings": ratings, "movies": movies, "tags": tags}


def _ml_ratings(rng, pairs, name, sep, encoding="utf-8"):
  return Table(
    name,
    ["did", "did", "rating_ml", "time_ml"],
    [[u, i, str(rng.randint(1, 5)), _time(rng)] for u, i in pairs],
    sep,
    encoding=encoding,
  )


def _build_ml100k(rng):
  pairs, items = _events(rng, rng.randint(3, 8), rng.randint(4, 12), True)
  flags = len(movielens.ML100K_GENRES)
  item_rows = [
    [i, f"{_title(rng)} (1995)", "01-Jan-1995", "", "http://x/" + _word(rng)]
    + [rng.choice("01") for _ in range(flags)]
    for i in items
  ]
  kinds = ["did", "text", "text", "text", "text"] + ["flag"] * flags
  return {
    "data": _ml_ratings(rng, pairs, "u.data", "\t"),
    "item": Table(
      "u.item", kinds, item_rows, "|", encoding="latin-1", unique=0
    ),
  }


def _build_ml1m_dat(rng):
  pairs, items = _events(rng, rng.randint(3, 8), rng.randint(4, 12), True)
  movies = Table(
    "movies.dat",
    ["did", "text", "text"],
    [[i, f"{_title(rng)} (1995)", "Drama|War"] for i in items],
    "::",
    encoding="latin-1",
    unique=0,
  )
  return {
    "ratings": _ml_ratings(rng, pairs, "ratings.dat", "::", "latin-1"),
    "movies": movies,
  }


def _build_ml1m_gz(rng):
  pairs, _ = _events(rng, rng.randint(3, 8), rng.randint(4, 12), True)
  ratings = Table(
    "ratings_no_time.csv",
    ["did", "did", "rating_ml"],
    [[u, i, str(rng.randint(1, 5))] for u, i in pairs],
    ",",
    csv=True,
    header=["user", "item", "rating"],
  )
  return {"ratings": ratings}


# ----------------------------------------------------------------- writers


def _plain(directory, raw):
  out = {}
  for name, data in raw.items():
    (directory / name).write_bytes(data)
    out[name] = str(directory / name)
  return out


def _write_beauty(directory, raw):
  (directory / "Beauty").mkdir(exist_ok=True)
  seq = directory / "Beauty" / "user_sequence.txt"
  seq.write_bytes(raw["user_sequence.txt"])
  text = directory / "item_short_text.txt"
  text.write_bytes(raw["item_short_text.txt"])
  return {"user_sequence.txt": str(seq), "item_short_text.txt": str(text)}


def _write_latest_small(directory, raw):
  path = directory / "ml-latest-small.zip"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in raw.items():
      zf.writestr(movielens.LATEST_SMALL_PREFIX + name, data)
  return {name: f"{path}:{movielens.LATEST_SMALL_PREFIX}{name}" for name in raw}


def _write_gz(directory, raw):
  path = directory / "ratings_no_time.csv.gz"
  path.write_bytes(gzip.compress(raw["ratings_no_time.csv"], mtime=0))
  return {"ratings_no_time.csv": str(path)}


# ----------------------------------------------------------------- oracles


def _canon(kind: str, value: str) -> str:
  value = value.strip(" \t") if kind == "sid" else value
  return (value.lstrip("0") or "0") if kind == "did" else value


def _stats(events, titles=None) -> dict:
  """Counts the loader must report from (user, item) events."""
  out = {
    "users": len({u for u, _ in events}),
    "items": len({i for _, i in events}),
    "interactions": len(events),
  }
  if titles is not None:
    out["titled"] = len({i for _, i in events if titles.get(i)})
  return out


def _pairs(table: Table, keep=lambda row: True):
  return [
    (_canon(table.kinds[0], r[0]), _canon(table.kinds[1], r[1]))
    for r in table.rows
    if r and keep(r)
  ]


def _oracle_interactions(t):
  events = _pairs(t["events"], lambda r: float(r[3]) >= 0.0)
  titles = {r[0].strip(" \t"): r[1].strip() for r in t["items"].rows if r}
  return _stats(events, titles)


def _oracle_openp5(t):
  events = [(r[0], i) for r in t["seq"].rows if r for i in r[1:]]
  titles = {r[0]: " ".join(r[1:]) for r in t["text"].rows if r}
  return _stats(events, titles)


def _oracle_latest_small(t):
  titles = {_canon("did", r[0]): r[1].strip() for r in t["movies"].rows if r}
  return _stats(_pairs(t["ratings"]), titles)


def _oracle_ml100k(t):
  titles = {_canon("did", r[0]): r[1].strip() for r in t["item"].rows if r}
  return _stats(_pairs(t["data"]), titles)


def _oracle_ml1m_dat(t):
  titles = {_canon("did", r[0]): r[1].strip() for r in t["movies"].rows if r}
  return _stats(_pairs(t["ratings"]), titles)


def _oracle_ml1m_gz(t):
  return _stats(_pairs(t["ratings"]))


FORMATS = (
  Format(
    "interactions (csv/tsv) + item text",
    _build_interactions,
    _plain,
    lambda d: interactions.load_interactions(
      next(d.glob("events.*")), item_text_path=d / "items.csv"
    ),
    _oracle_interactions,
    "title",
  ),
  Format(
    "openp5 user_sequence + short text",
    _build_openp5,
    _write_beauty,
    lambda d: openp5.load_openp5_beauty(d, d),
    _oracle_openp5,
    "text",
  ),
  Format(
    "ml-latest-small.zip",
    _build_latest_small,
    _write_latest_small,
    lambda d: movielens.load_latest_small(d / "ml-latest-small.zip"),
    _oracle_latest_small,
    "title",
    archive="ml-latest-small.zip",
  ),
  Format(
    "ml-100k u.data + u.item",
    _build_ml100k,
    _plain,
    movielens.load_ml100k,
    _oracle_ml100k,
    "title",
  ),
  Format(
    "ml-1m ratings.dat + movies.dat",
    _build_ml1m_dat,
    _plain,
    movielens.load_ml1m,
    _oracle_ml1m_dat,
    "title",
  ),
  Format(
    "ml-1m ratings_no_time.csv.gz",
    _build_ml1m_gz,
    _write_gz,
    movielens.load_ml1m,
    _oracle_ml1m_gz,
    archive="ratings_no_time.csv.gz",
  ),
)


# --------------------------------------------------------------- rendering


def _render_row(table: Table, row: list[str]) -> str:
  if table.csv:
    buf = io.StringIO()
    csv.writer(buf, delimiter=table.sep, lineterminator="").writerow(row)
    return buf.getvalue()
  return table.sep.join(row)


def render(table: Table, eol: str = "\n", final_eol: bool = True) -> bytes:
  """The file's bytes; ``_RAW`` marks become invalid bytes."""
  lines = [] if table.header is None else [_render_row(table, table.header)]
  lines += [_render_row(table, row) for row in table.rows]
  text = eol.join(lines) + (eol if final_eol and lines else "")
  bad = _RAW_BYTES[table.encoding]
  return bad.join(part.encode(table.encoding) for part in text.split(_RAW))


# --------------------------------------------------------------- mutations


def _fill(template: str, rng: random.Random) -> str:
  return template.replace("{n}", str(_fresh(rng))).replace(
    "{s}", f"q{_fresh(rng)}"
  )


def _usable(value: str, table: Table, column: int) -> bool:
  """Whether a value can stand in this column without changing the row's
  shape (a separator inside it would split the field: another mutation)."""
  if table.encoding == "latin-1":
    try:
      value.replace(_RAW, "").encode("latin-1")
    except UnicodeEncodeError:
      return False
  if table.csv:
    return True
  seps = (" ", "\t") if table.sep == " " else (table.sep,)
  if any(s in value for s in seps):
    return False
  # An empty field at the end of a whitespace-split line just vanishes.
  return not (table.sep == " " and value == "")


def _pick_row(case: Case, rng: random.Random):
  """(table, index) of a random non-empty row of a random table of
  ``case``, or None when that table has none."""
  _, table = rng.choice(list(case.tables.items()))
  rows = [i for i, r in enumerate(table.rows) if r]
  if not rows:
    return None
  return table, rng.choice(rows)


def _mutate_field(case: Case, rng: random.Random, good: bool):
  picked = _pick_row(case, rng)
  if picked is None:
    return False
  table, i = picked
  row = table.rows[i]
  column = rng.randrange(len(row))
  kind = table.kinds[min(column, len(table.kinds) - 1)]
  bad, fine = _VALUES[kind]
  options = fine + (
    _UTF8_ONLY_FINE.get(kind, []) if table.encoding == "utf-8" else []
  )
  if not good:
    options = bad
  options = [
    v for v in (_fill(o, rng) for o in options) if _usable(v, table, column)
  ]
  if not options:
    return False
  value = rng.choice(options)
  row[column] = value
  case.malformed = not good
  case.where = (table.name, table.row_line(i))
  case.family = {
    "did": "ids",
    "sid": "ids",
    "text": "text",
    "flag": "flags",
  }.get(kind, "ratings" if kind.startswith("rating") else "timestamps")
  case.measure_memory = len(value) > 1000
  return True


def _mutate_shape(case: Case, rng: random.Random):
  """Missing or extra fields, or another separator, on one row."""
  picked = _pick_row(case, rng)
  if picked is None:
    return False
  table, i = picked
  row = table.rows[i]
  how = rng.choice(("missing", "extra", "separator"))
  if how == "missing":
    row.pop()
  elif how == "extra":
    row.append("extra" if table.kinds[-1] != "flag" else "0")
  else:
    if table.sep == " ":
      return False  # any other separator is part of an id there
    other = {",": ";", "\t": ",", "|": ",", "::": ":", ";": ","}[table.sep]
    table.rows[i] = [other.join(row)]
  n = len(table.rows[i])
  if table.min_fields is not None:
    # A line emptied entirely is a blank line, which is skipped.
    case.malformed = 0 < n < table.min_fields
  else:
    case.malformed = n != len(table.kinds)
  case.where = (table.name, table.row_line(i))
  case.family = "columns"
  return True


def _mutate_duplicate(case: Case, rng: random.Random):
  """A catalogue id or OpenP5 user listed twice, or a repeated rating."""
  picked = _pick_row(case, rng)
  if picked is None:
    return False
  table, i = picked
  copy = list(table.rows[i])
  at = rng.randint(i + 1, len(table.rows))
  table.rows.insert(at, copy)
  case.malformed = table.unique is not None
  case.where = (table.name, table.row_line(at))
  case.family = "duplicates"
  return True


def _mutate_header(case: Case, rng: random.Random):
  """A header column renamed or dropped (or a known alias: fine)."""
  tables = [t for t in case.tables.values() if t.header]
  if not tables:
    return False
  table = rng.choice(tables)
  j = rng.randrange(len(table.header))
  user_file = case.fmt is FORMATS[0]
  how = rng.choice(("rename", "drop", "alias"))
  if how == "drop":
    table.header = None
    case.malformed = True
    case.where = (table.name, 1)
    # Without a header the first row is read as one: a user file then
    # misses its columns, a MovieLens file its documented header.
    case.family = "header"
    return True
  id_column = j == 0 if table.name == "items.csv" else j < 2
  if how == "alias" and user_file and id_column:
    # Any accepted spelling of the user or item column: still well-formed.
    is_user = j == 0 and table.name != "items.csv"
    aliases = (
      interactions.USER_COLUMNS if is_user else interactions.ITEM_COLUMNS
    )
    table.header[j] = rng.choice(aliases)
    case.family = "header"
    return True
  if user_file and j >= 2 and table.name != "items.csv":
    return False  # other columns are ignored there, by design
  if user_file and table.name == "items.csv" and j >= 1:
    return False  # any name is a text column there
  table.header[j] = "col" + _word(rng)
  case.malformed = True
  case.where = (table.name, 1)
  case.family = "header"
  return True


def _mutate_truncate(case: Case, rng: random.Random):
  """Rows cut at a line end (fine) or after a separator (missing fields)."""
  name, table = rng.choice(list(case.tables.items()))
  if len(table.rows) < 2:
    return False
  keep = rng.randint(1, len(table.rows) - 1)
  del table.rows[keep:]
  last = table.rows[-1]
  case.family = "truncation"
  if rng.random() < 0.5 and last and len(last) > 1:
    cut = rng.randint(1, len(last) - 1)
    del last[cut:]
    fixed = table.min_fields is None
    case.malformed = len(last) < (table.min_fields or 0) or fixed
    case.where = (table.name, table.row_line(len(table.rows) - 1))
    return True
  # Whole lines dropped: still well-formed, unless nothing is rated now.
  if not any(table.rows):
    return False
  return True


def _mutate_bytes(case: Case, rng: random.Random):
  """File-level: empty file, byte-order mark, line ends, long lines."""
  name, table = rng.choice(list(case.tables.items()))
  how = rng.choice(
    ("empty", "bom", "crlf", "cr", "no_final_eol", "blank", "long_id", "long")
  )
  case.family = "encoding" if how in ("bom", "crlf", "cr") else "layout"
  if how == "empty":
    case.raw[table.name] = b""
    case.family = "empty files"
    optional = table.name == "tags.csv" and rng.random() < 0.5
    if optional:
      table.rows = []  # header only: a dataset without tags is fine
      case.raw.pop(table.name)
      return True
    case.malformed = True
    case.where = (table.name, None)
    return True
  if how in ("bom", "crlf", "no_final_eol"):
    eol = "\r\n" if how == "crlf" else "\n"
    data = render(table, eol, final_eol=how != "no_final_eol")
    case.raw[table.name] = (b"\xef\xbb\xbf" if how == "bom" else b"") + data
    return True
  if how == "cr":
    if len(table.rows) + (table.header is not None) < 2:
      return False
    case.raw[table.name] = render(table, "\r")
    case.malformed = True
    case.where = (table.name, 1)
    return True
  if how == "blank":
    table.rows.insert(rng.randint(0, len(table.rows)), [])
    return True
  rows = [i for i, r in enumerate(table.rows) if r]
  if not rows:
    return False
  i = rng.choice(rows)
  case.measure_memory = True
  case.family = "long lines"
  if how == "long_id":
    table.rows[i][0] = "7" * 200_000
    case.malformed = True
    case.where = (table.name, table.row_line(i))
    return True
  if table.min_fields == 2:  # an OpenP5 user with 20,000 items
    table.rows[i] += [rng.choice(table.rows[i][1:]) for _ in range(20_000)]
    return True
  text = [j for j, k in enumerate(table.kinds) if k == "text"]
  if not text:
    return False
  table.rows[i][text[0]] = "long " * 10_000
  return True


def _mutate_archive(case: Case, rng: random.Random):
  """A truncated or corrupted zip / gzip, or a missing zip member."""
  if case.fmt.archive is None:
    return False
  how = rng.choice(("truncate", "flip", "missing"))
  case.malformed = True
  case.family = "archives"
  case.where = (case.fmt.archive, None)
  if how == "missing":
    if not case.fmt.archive.endswith(".zip"):
      return False
    case.raw["movies.csv"] = None  # not written
    return True
  seed = rng.random()

  def damage(path: pathlib.Path):
    data = bytearray(path.read_bytes())
    r = random.Random(seed)
    if how == "truncate":
      del data[r.randrange(len(data)) :]
    else:
      lo, hi = _payload(path, bytes(data))
      data[r.randrange(lo, hi)] ^= 1 << r.randrange(8)
    path.write_bytes(bytes(data))

  case.archive_damage = damage
  return True


def _payload(path: pathlib.Path, data: bytes) -> tuple[int, int]:
  """Byte range whose damage the format's checksums must catch."""
  if path.suffix == ".gz":
    return 10, len(data)  # deflate body, CRC-32 and size
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    info = zf.getinfo(movielens.LATEST_SMALL_PREFIX + "ratings.csv")
  start = info.header_offset + 30 + len(info.filename.encode())
  start += len(info.extra)
  return start, start + info.compress_size


_MUTATIONS = (
  (lambda c, r: _mutate_field(c, r, good=False), 6),
  (lambda c, r: _mutate_field(c, r, good=True), 3),
  (_mutate_shape, 2),
  (_mutate_duplicate, 1),
  (_mutate_header, 1),
  (_mutate_truncate, 1),
  (_mutate_bytes, 2),
  (_mutate_archive, 1),
  (lambda c, r: True, 1),  # unmutated
)


def make_case(index: int, seed: int = 0) -> Case:
  """The ``index``-th case: a format (in turn) and one mutation."""
  rng = random.Random(seed * 1_000_003 + index)
  fmt = FORMATS[index % len(FORMATS)]
  while True:
    case = Case(fmt, fmt.build(rng))
    mutate = rng.choices(
      [m for m, _ in _MUTATIONS], weights=[w for _, w in _MUTATIONS]
    )[0]
    if mutate(case, rng):
      return case


# -------------------------------------------------------------- running


def run_case(case: Case, directory: pathlib.Path) -> str:
  """Writes, loads and classifies one case; returns its outcome name."""
  raw = {}
  for table in case.tables.values():
    if table.name in case.raw:
      if case.raw[table.name] is not None:
        raw[table.name] = case.raw[table.name]
    else:
      raw[table.name] = render(table)
  shown = case.fmt.write(directory, raw)
  if case.archive_damage is not None:
    case.archive_damage(directory / case.fmt.archive)
  size = sum(len(v) for v in raw.values())
  if case.measure_memory:
    tracemalloc.start()
  start = time.perf_counter()
  try:
    data = case.fmt.load(directory)
    error = None
  except Exception as e:  # every failure is classified, none escapes
    data, error = None, e
  elapsed = time.perf_counter() - start
  peak = 0
  if case.measure_memory:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  if elapsed > TIME_LIMIT_S:
    return "too_slow"
  if peak > MEMORY_FACTOR * size + MEMORY_ALLOWANCE:
    return "too_much_memory"
  if error is not None:
    if not case.malformed:
      return "crash_on_valid"
    return (
      "rejected_with_location"
      if _located(str(error), case, shown, directory)
      else "error_without_location"
    )
  if case.malformed:
    return "silently_accepted"
  return "accepted_valid" if _matches(data, case) else "results_differ"


def _located(message: str, case: Case, shown: dict, directory) -> bool:
  """Whether an error names the damaged file (and line, when one is)."""
  name, line = case.where or (None, None)
  if case.family == "archives" or name == case.fmt.archive:
    return str(directory / case.fmt.archive) in message
  path = shown.get(name)
  if path is None or path not in message:
    return False
  return line is None or f"{path}:{line}:" in message


def _matches(data, case: Case) -> bool:
  expected = case.fmt.oracle(case.tables)
  got = data.stats()
  if "titled" in expected:
    values = data.catalog.item_fields.get(case.fmt.text_field)
    got["titled"] = 0 if values is None else int(sum(v != "" for v in values))
  return got == expected


def fuzz_drill(
  cases: int = 10_000, seed: int = 0, progress=None
) -> list[DrillRow]:
  """Runs ``cases`` fuzz cases; one row per (format, mutation family).

  Args:
    cases: how many cases (formats in turn).
    seed: changes every case.
    progress: optional callable(n) told after each case (a progress bar).
  """
  counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
    collections.Counter
  )
  with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
    for index in range(cases):
      case = make_case(index, seed)
      directory = pathlib.Path(tmp) / f"case{index}"
      directory.mkdir()
      outcome = run_case(case, directory)
      counts[(case.fmt.name, case.family)][outcome] += 1
      shutil.rmtree(directory)
      if progress is not None:
        progress(1)
  return [
    DrillRow("fuzz", f"{fmt}: {family}", counter)
    for (fmt, family), counter in sorted(counts.items())
  ]
