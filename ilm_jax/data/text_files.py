"""Line readers that report malformed input by file and line number."""

from __future__ import annotations

import csv
import gzip
import io
import pathlib
import zipfile
from collections.abc import Iterator


def open_text(
  path: str | pathlib.Path, encoding: str = "utf-8"
) -> io.TextIOBase:
  """Opens a plain or gzip text file; a missing file names itself."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such data file")
  if path.suffix == ".gz":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)
  return open(path, encoding=encoding, newline="")


def split_lines(
  path: str | pathlib.Path, sep: str | None, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
  """Yields (1-based line number, fields) for each non-blank line."""
  with open_text(path, encoding) as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if line.strip():
        yield line_no, line.split(sep)


def csv_rows(
  source: str | pathlib.Path, member: str | None = None
) -> tuple[str, Iterator[tuple[int, list[str]]]]:
  """CSV rows (after the header) of a file or of a member of a zip archive.

  Returns:
    (a display name for error messages, iterator of (line number, fields)).
    Line numbers count the header as line 1.
  """
  source = pathlib.Path(source)
  if member is None:
    name = str(source)

    def rows():
      with open_text(source) as f:
        yield from _csv_iter(f)

  else:
    name = f"{source}:{member}"

    def rows():
      if not source.exists():
        raise FileNotFoundError(f"{source}: no such data file")
      with zipfile.ZipFile(source) as zf:
        try:
          raw = zf.open(member)
        except KeyError:
          raise FileNotFoundError(
            f"{name}: member missing from archive"
          ) from None
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
          yield from _csv_iter(f)

  return name, rows()


def _csv_iter(f) -> Iterator[tuple[int, list[str]]]:
  reader = csv.reader(f)
  next(reader, None)  # header
  for fields in reader:
    if fields:
      yield reader.line_num, fields
