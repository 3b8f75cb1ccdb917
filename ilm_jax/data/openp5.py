"""OpenP5 ``user_sequence.txt`` files with item text joined where it exists.

One parser serves the named OpenP5 datasets (their files in the shared data
directory) and a user's own file in the same format (``load_openp5_file``).
Ids are strings (``fields.string_id``: printable, no whitespace, at most
64 characters), separated by spaces or tabs.
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np

from ilm_jax.data import dataset as ds
from ilm_jax.data import fields as fv
from ilm_jax.data.interactions import read_item_text, text_columns
from ilm_jax.data.movielens import read_ml100k_items
from ilm_jax.data.text_files import split_lines


def read_user_sequences(path: str | pathlib.Path) -> dict[str, list[str]]:
  """``user item item ...`` per line, chronological; raw ids as strings."""
  sequences: dict[str, list[str]] = {}
  line_of: dict[str, int] = {}
  for line_no, fields in split_lines(path, None):
    if len(fields) < 2:
      raise ds.DataFormatError(
        path,
        line_no,
        "a user line needs a user id and at least one item; write "
        "`user item item ...`",
      )
    user = fv.string_id(path, line_no, fields[0], "user")
    if user in sequences:
      raise ds.DataFormatError(
        path,
        line_no,
        f"user {user!r} appears twice (lines {line_of[user]} and {line_no}); "
        "give each user one line",
      )
    sequences[user] = [
      fv.string_id(path, line_no, f, "item") for f in fields[1:]
    ]
    line_of[user] = line_no
  if not sequences:
    raise ds.DataFormatError(
      path, None, "no user sequences found; is this the right file?"
    )
  return sequences


def read_short_text(path: str | pathlib.Path) -> dict[str, str]:
  """``ASIN short text`` per line (Beauty item text; the text may be empty)."""
  text, line_of = {}, {}
  for line_no, fields in split_lines(path, None):
    item = fv.string_id(path, line_no, fields[0], "item")
    if item in text:
      raise ds.DataFormatError(
        path,
        line_no,
        f"item {item!r} repeated (lines {line_of[item]} and {line_no}); keep "
        "one line per item",
      )
    text[item] = " ".join(fields[1:])
    line_of[item] = line_no
  if not text:
    raise ds.DataFormatError(
      path, None, "no items listed; is this the right item-text file?"
    )
  return text


def load_openp5(
  name: str,
  sequence_path: str | pathlib.Path,
  item_text: dict[str, dict[str, str]] | None = None,
) -> ds.Dataset:
  """An OpenP5 dataset.

  Args:
    name: dataset name ("openp5-ml100k", ...).
    sequence_path: the ``user_sequence.txt`` file.
    item_text: field -> {raw item id -> text}, or None when items have none.

  Returns:
    The Dataset; users and items keep OpenP5's raw ids, numbered densely.
  """
  seqs = read_user_sequences(sequence_path)
  # Lists, not numpy string arrays as wide as the longest id times N.
  users = [u for u, v in seqs.items() for _ in v]
  items = list(itertools.chain.from_iterable(seqs.values()))
  order = np.concatenate([np.arange(len(v)) for v in seqs.values()])
  catalog_ids = fields = None
  if item_text:
    catalog_ids, fields = text_columns(item_text)
  return ds.from_events(name, users, items, order, catalog_ids, fields)


def load_openp5_file(
  sequence_path: str | pathlib.Path,
  item_text_path: str | pathlib.Path | None = None,
  name: str = "openp5",
) -> ds.Dataset:
  """A user's own OpenP5-format file, optionally with an item-text file.

  Args:
    sequence_path: ``user item item ...`` per line, oldest item first.
    item_text_path: optional CSV/TSV with an item column and text columns
      (``interactions.read_item_text``).
    name: the dataset's name.
  """
  item_text = read_item_text(item_text_path) if item_text_path else None
  return load_openp5(name, sequence_path, item_text)


def load_openp5_ml100k(openp5_dir, ml100k_dir) -> ds.Dataset:
  """OpenP5 ML-100K; titles and genres joined through ML-100K's ``u.item``."""
  ids, titles, genres = read_ml100k_items(pathlib.Path(ml100k_dir) / "u.item")
  ids = ids.astype(str)
  text = {"title": dict(zip(ids, titles)), "genres": dict(zip(ids, genres))}
  path = pathlib.Path(openp5_dir) / "ML100K" / "user_sequence.txt"
  return load_openp5("openp5-ml100k", path, text)


def load_openp5_beauty(openp5_dir, beauty_text_dir) -> ds.Dataset:
  """OpenP5 Amazon Beauty with its short item text."""
  text = read_short_text(pathlib.Path(beauty_text_dir) / "item_short_text.txt")
  path = pathlib.Path(openp5_dir) / "Beauty" / "user_sequence.txt"
  return load_openp5("openp5-beauty", path, {"text": text})


def load_openp5_clothing(openp5_dir) -> ds.Dataset:
  """OpenP5 Amazon Clothing: no item text (stage 1 uses II/UI only)."""
  path = pathlib.Path(openp5_dir) / "Clothing" / "user_sequence.txt"
  return load_openp5("openp5-clothing", path)
