"""A user's own data: an interactions CSV/TSV and an optional item-text file.

The interactions file has a header row naming its columns; a user column
(``user``, ``user_id``, ``userId``) and an item column (``item``,
``item_id``, ``itemId``, ``movieId``) are required, ``timestamp`` orders each
user's sequence (without it the file order does) and ``rating`` lets
``dataset.min_rating`` drop weak interactions. Other columns are ignored.

The item-text file has the same shape: an item column plus text columns
(``title``, ``genres``, ``description``...), each of which becomes a catalog
item field under its lower-cased column name, so ``title`` and ``genres``
mean what they mean for MovieLens (prompt titles, profile genres).

Ids are kept as strings, exactly as written: 1 to 64 printable characters
without whitespace (``fields.string_id``); numbers are plain decimals. The
delimiter is sniffed from the header line (tab, comma, semicolon or
pipe); the file extension (.csv, .tsv) settles a header that contains
several of them. Values follow CSV quoting, so a title may contain the
delimiter inside double quotes.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ilm_jax.data import dataset as ds
from ilm_jax.data import fields as fv
from ilm_jax.data.text_files import csv_records, read_text

# Accepted spellings, compared after _normalise (case, "_", "-", " " ignored).
USER_COLUMNS = ("user", "user_id", "userId")
ITEM_COLUMNS = ("item", "item_id", "itemId", "movieId")
TIMESTAMP_COLUMNS = ("timestamp",)
RATING_COLUMNS = ("rating",)

_DELIMITERS = ("\t", ",", ";", "|")
_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _normalise(column: str) -> str:
  """Column name for matching: User_ID, user-id and userId read as userid."""
  return re.sub(r"[\s_-]", "", column.lower())


def _delimiter(path: pathlib.Path, header_line: str) -> str:
  """The delimiter of a file, from its header line and extension."""
  suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
  by_suffix = _BY_SUFFIX.get(suffixes[-1]) if suffixes else None
  present = [d for d in _DELIMITERS if d in header_line]
  if by_suffix is not None and (by_suffix in present or not present):
    return by_suffix
  if present:
    return present[0]
  # A one-column header: parse it anyway so the missing-column error lists
  # what the header holds.
  return ","


class Table(NamedTuple):
  """A delimited file's header and its data rows (read lazily, once).

  Attributes:
    path: the file.
    header: column names as written (byte-order mark and spaces stripped).
    header_line: the header's 1-based line number.
    rows: iterator of (1-based line number, fields), one field per column.
  """

  path: pathlib.Path
  header: list[str]
  header_line: int
  rows: Iterator[tuple[int, list[str]]]


def read_table(path: str | pathlib.Path) -> Table:
  """Opens a delimited text file with a header row (see module docstring).

  Blank lines are skipped; a row with a different number of fields than the
  header is an error naming its line.

  Raises:
    DataFormatError: an empty file, or (while iterating) a ragged row.
    FileNotFoundError: no such file.
  """
  path = pathlib.Path(path)
  text = read_text(path)
  # The delimiter comes from the first non-blank line.
  first_line = re.search(r"^[ \t]*[^ \t\r\n].*$", text, re.MULTILINE)
  delimiter = _delimiter(path, first_line.group() if first_line else "")
  records = csv_records(path, text, delimiter)
  first = next(records, None)
  if first is None:
    raise ds.DataFormatError(
      path, None, "empty file: expected a header row naming the columns"
    )
  header_line_no, header = first
  header = [c.strip() for c in header]

  def rows():
    for line_no, fields in records:
      if len(fields) != len(header):
        raise ds.DataFormatError(
          path,
          line_no,
          f"expected {len(header)} fields ({_layout(header, delimiter)}), "
          f"found {len(fields)}; quote values that contain the delimiter",
        )
      yield line_no, fields

  return Table(path, header, header_line_no, rows())


def _layout(header: list[str], delimiter: str) -> str:
  shown = {"\t": "<tab>"}.get(delimiter, delimiter)
  return shown.join(header)


def _column(
  table: Table, aliases: tuple[str, ...], what: str, required: bool
) -> int | None:
  """The position of the one column spelled as one of ``aliases``."""
  wanted = {_normalise(a) for a in aliases}
  header = table.header
  found = [i for i, c in enumerate(header) if _normalise(c) in wanted]
  if len(found) > 1:
    names = [header[i] for i in found]
    raise ds.DataFormatError(
      table.path,
      table.header_line,
      f"several {what} columns {names}; keep one of them",
    )
  if found:
    return found[0]
  if required:
    raise ds.DataFormatError(
      table.path,
      table.header_line,
      f"no {what} column (expected one of {list(aliases)}); "
      f"the header has columns {header}",
    )
  return None


def _value(path, line_no: int, fields, column: int, name: str) -> str:
  # Spaces around a value are layout (", " separators); inside, an error.
  return fv.string_id(path, line_no, fields[column].strip(" \t"), name)


def _number(path, line_no: int, fields, column: int, name: str) -> float:
  return fv.finite_number(path, line_no, fields[column].strip(" \t"), name)


def load_interactions(
  path: str | pathlib.Path,
  min_rating: float = 0.0,
  item_text_path: str | pathlib.Path | None = None,
  name: str = "interactions",
) -> ds.Dataset:
  """A Dataset from an interactions file (see the module docstring).

  Args:
    path: the interactions CSV/TSV.
    min_rating: interactions rated below this are dropped; > 0 needs a
      ``rating`` column.
    item_text_path: optional item-text CSV/TSV joined as item fields.
    name: the dataset's name.

  Returns:
    The Dataset: every user's items ordered by timestamp (ties and files
    without timestamps keep file order), users and items numbered densely.

  Raises:
    DataFormatError: a malformed file, naming the file and line.
  """
  table = read_table(path)
  path, header = table.path, table.header
  user_col = _column(table, USER_COLUMNS, "user", True)
  item_col = _column(table, ITEM_COLUMNS, "item", True)
  time_col = _column(table, TIMESTAMP_COLUMNS, "timestamp", False)
  rating_col = _column(table, RATING_COLUMNS, "rating", False)
  if min_rating > 0 and rating_col is None:
    raise ds.DataFormatError(
      path,
      table.header_line,
      f"min_rating={min_rating} needs a rating column; the header has "
      f"columns {header}",
    )
  users, items, keys = [], [], []
  rows_read = 0
  for position, (line_no, fields) in enumerate(table.rows):
    rows_read += 1
    user = _value(path, line_no, fields, user_col, header[user_col])
    item = _value(path, line_no, fields, item_col, header[item_col])
    key = (
      _number(path, line_no, fields, time_col, header[time_col])
      if time_col is not None
      else position
    )
    if rating_col is not None:
      rating = _number(path, line_no, fields, rating_col, header[rating_col])
      if rating < min_rating:
        continue
    users.append(user)
    items.append(item)
    keys.append(key)
  if not rows_read:
    raise ds.DataFormatError(
      path, None, "no interactions after the header; add rows below it"
    )
  if not users:
    raise ds.DataFormatError(
      path,
      None,
      f"no interaction is rated >= min_rating={min_rating}; lower "
      "dataset.min_rating",
    )
  catalog_ids = item_fields = None
  if item_text_path is not None:
    catalog_ids, item_fields = text_columns(read_item_text(item_text_path))
  return ds.from_events(
    name,
    users,
    items,
    np.array(keys, dtype=np.float64),
    catalog_ids,
    item_fields,
  )


def read_item_text(path: str | pathlib.Path) -> dict[str, dict[str, str]]:
  """An item-text file as {field: {raw item id: text}}.

  Field names are the lower-cased column names; every column but the item
  column is text. An item listed twice is an error (which row would win is
  a guess).
  """
  table = read_table(path)
  path, header = table.path, table.header
  item_col = _column(table, ITEM_COLUMNS, "item", True)
  text_cols = [i for i in range(len(header)) if i != item_col]
  names = [header[i].lower() for i in text_cols]
  if not text_cols or len(set(names)) != len(names) or "" in names:
    raise ds.DataFormatError(
      path,
      table.header_line,
      "expected an item column and uniquely named text columns; the header "
      f"has columns {header}",
    )
  text: dict[str, dict[str, str]] = {n: {} for n in names}
  first_line: dict[str, int] = {}
  for line_no, fields in table.rows:
    item = _value(path, line_no, fields, item_col, header[item_col])
    if item in first_line:
      raise ds.DataFormatError(
        path,
        line_no,
        f"item {item!r} repeated (first on line {first_line[item]}); keep "
        "one row per item",
      )
    first_line[item] = line_no
    for n, i in zip(names, text_cols):
      text[n][item] = fields[i].strip()
  if not first_line:
    raise ds.DataFormatError(
      path, None, "no items after the header; add one row per item"
    )
  return text


def text_columns(
  item_text: dict[str, dict[str, str]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """{field: {item: text}} as ``from_events``' (catalog ids, fields) arrays.

  Items missing from a field get "" there.
  """
  catalog_ids = np.array(
    sorted(set().union(*map(set, item_text.values()))), dtype=str
  )
  fields = {
    f: np.array([m.get(i, "") for i in catalog_ids], dtype=object)
    for f, m in item_text.items()
  }
  return catalog_ids, fields
