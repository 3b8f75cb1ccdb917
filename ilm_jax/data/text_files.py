"""Line readers that report malformed input by file and line number.

A file is read as bytes and decoded in one piece with strict decoding; a
decoding error is then located by counting line ends up to its byte, so it
names its line. gzip and zip errors (truncated or corrupt archives) are
re-raised naming the file and the line reached. The text is checked for
characters that have no business in a text data file (control characters
other than tab, byte-order marks after the first byte, a carriage return not
ending a line), which would otherwise end up inside an id.

Memory stays within a small multiple of the (decompressed) file's size.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import pathlib
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from ilm_jax.data.dataset import DataFormatError

# Control characters (C0 but tab and line feed, DEL, C1), byte-order marks,
# and a carriage return that does not end a line.
_BAD_CHARS = re.compile(
  "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]|\r(?!\n|\\Z)"
)
# What reading a damaged gzip or zip member raises.
_ARCHIVE_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)
_CHUNK = 1 << 20
_BLANKS = re.compile("[ \t]+")


def _check_exists(path: pathlib.Path):
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such data file")


def _open_binary(path: pathlib.Path) -> BinaryIO:
  """A plain or gzip (by ``.gz`` suffix) file, opened for bytes."""
  _check_exists(path)
  if path.suffix == ".gz":
    return gzip.open(path, "rb")
  return open(path, "rb")


def _read_all(name, stream: BinaryIO) -> bytes:
  """Every byte of a stream; damage names the line it was reached on."""
  chunks, lines = [], 0
  while True:
    try:
      chunk = stream.read(_CHUNK)
    except _ARCHIVE_ERRORS as e:
      raise DataFormatError(
        name,
        lines + 1,
        f"truncated or corrupt compressed data ({e}); download or "
        "recompress the file",
      ) from None
    if not chunk:
      return b"".join(chunks)
    chunks.append(chunk)
    lines += chunk.count(b"\n")


def _line_of(data, position: int) -> tuple[int, int]:
  """(1-based line, 1-based column) of a position in bytes or text."""
  newline = b"\n" if isinstance(data, bytes) else "\n"
  line = data.count(newline, 0, position) + 1
  column = position - (data.rfind(newline, 0, position) + 1) + 1
  return line, column


def decoded_text(name, stream: BinaryIO, encoding: str = "utf-8") -> str:
  """The checked text of a stream (line ends kept).

  A UTF-8 byte-order mark at the very start is dropped (it marks the
  encoding, it is not data); anywhere else it is an error.

  Raises:
    DataFormatError: undecodable bytes, control characters, a byte-order
      mark inside the text, or a damaged compressed stream.
  """
  data = _read_all(name, stream)
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8) :]
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError as e:
    line, column = _line_of(data, e.start)
    raise DataFormatError(
      name,
      line,
      f"bytes {data[e.start : e.start + 4]!r} at column {column} are not "
      f"valid {encoding}; save the file as {encoding}",
    ) from None
  bad = _BAD_CHARS.search(text)
  if bad:
    line, column = _line_of(text, bad.start())
    char = bad.group()
    what = (
      "a byte-order mark"
      if char == "\ufeff"
      else f"control character U+{ord(char):04X}"
    )
    raise DataFormatError(
      name,
      line,
      f"{what} at column {column}; remove it (a data file holds printable "
      "text, tabs and line ends only)",
    )
  return text


def split_lines(
  path: str | pathlib.Path, sep: str | None, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
  """Yields (1-based line number, fields) for each non-blank line.

  Args:
    path: a plain or ``.gz`` file.
    sep: the field separator; None = runs of spaces and tabs (not other
      whitespace, which must not vanish silently from an id).
    encoding: the file's encoding.
  """
  path = pathlib.Path(path)
  with _open_binary(path) as f:
    text = decoded_text(path, f, encoding)
  for line_no, line in enumerate(text.split("\n"), start=1):
    line = line.removesuffix("\r")
    if not line.strip(" \t"):
      continue
    if sep is None:
      yield line_no, _BLANKS.split(line.strip(" \t"))
    else:
      yield line_no, line.split(sep)


def csv_records(
  name, text: str, delimiter: str = ","
) -> Iterator[tuple[int, list[str]]]:
  """(line number where a record ends, fields) of each non-blank record.

  Args:
    name: the file, for error messages.
    text: its checked text (``decoded_text``).
    delimiter: the field separator.

  Raises:
    DataFormatError: a csv error (e.g. an unbalanced quote), at its line.
  """
  # newline="" keeps quoted line ends; lone "\r" was rejected already.
  reader = csv.reader(
    io.StringIO(text, newline=""), delimiter=delimiter, strict=True
  )
  while True:
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise DataFormatError(
        name, reader.line_num, f"{e}; check the quoting of this line"
      ) from None
    if len(fields) > 1 or (fields and fields[0].strip(" \t")):
      yield reader.line_num, fields


def read_text(path: str | pathlib.Path, encoding: str = "utf-8") -> str:
  """The checked text of a plain or gzip file (``decoded_text``)."""
  path = pathlib.Path(path)
  with _open_binary(path) as f:
    return decoded_text(path, f, encoding)


def csv_rows(
  source: str | pathlib.Path,
  member: str | None = None,
  header: list[str] | None = None,
) -> tuple[str, Iterator[tuple[int, list[str]]]]:
  """CSV rows (after the header) of a file or of a member of a zip archive.

  Args:
    source: a plain or ``.gz`` CSV file, or a zip archive.
    member: the CSV file's name inside the archive; None = not an archive.
    header: the column names the first line must hold (checked while
      iterating); None = any first line.

  Returns:
    (a display name for error messages, iterator of (line number, fields)).
    Line numbers count the header as line 1.
  """
  source = pathlib.Path(source)
  name = str(source) if member is None else f"{source}:{member}"

  def rows():
    if member is None:
      text = read_text(source)
    else:
      with _zip_member(source, member) as f:
        text = decoded_text(name, f)
    yield from _after_header(name, csv_records(name, text), header)

  return name, rows()


def _after_header(name, records, header: list[str] | None):
  first = next(records, None)
  if header is not None:
    found = None if first is None else [c.strip(" \t") for c in first[1]]
    if found != header:
      raise DataFormatError(
        name,
        1 if first is None else first[0],
        f"expected the header {','.join(header)}, found "
        f"{found if found is None else ','.join(found)[:200]!r}; is this the "
        "right file?",
      )
  yield from records


@contextlib.contextmanager
def _zip_member(source: pathlib.Path, member: str) -> Iterator[BinaryIO]:
  """One member of a zip archive, opened; damage names the archive."""
  _check_exists(source)
  with contextlib.ExitStack() as stack:
    try:
      archive = stack.enter_context(zipfile.ZipFile(source))
      stream = stack.enter_context(archive.open(member))
    except KeyError:
      raise FileNotFoundError(
        f"{source}:{member}: member missing from archive; is this the right "
        "archive?"
      ) from None
    except (*_ARCHIVE_ERRORS, NotImplementedError, RuntimeError) as e:
      raise DataFormatError(
        source,
        None,
        f"truncated or corrupt zip archive ({e}); download it again",
      ) from None
    yield stream
