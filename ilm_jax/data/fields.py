"""Field validators shared by the data parsers: ids, ratings, timestamps.

Parsers never guess: a value is read only when it is exactly what the format
says, and anything else is a ``DataFormatError`` naming the file, the line
and the way out. In particular Python's own ``int``/``float`` are never
applied to raw text, since they accept signs, ``1_0``, surrounding
whitespace, ``nan`` and non-ASCII digits.

Ids are capped at ``MAX_ID_CHARS`` characters, so the numpy arrays of unique
ids (fixed-width strings) stay within a constant factor of the file's size.
"""

from __future__ import annotations

import math
import re

from ilm_jax.data.dataset import DataFormatError

MAX_ID_CHARS = 64
# Timestamps are stored as int64.
_MAX_INT64 = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")
# A plain decimal number: optional minus, digits, optional fraction and
# exponent. No "+", "_", spaces, "nan" or "inf".
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_UNSIGNED = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def shown(value: str, limit: int = 40) -> str:
  """``repr`` of a value, shortened so errors stay one readable line."""
  if len(value) > limit:
    return repr(value[:limit]) + f"... ({len(value)} characters)"
  return repr(value)


def _check_length(path, line_no, value: str, field: str):
  if not value:
    raise DataFormatError(
      path, line_no, f"empty {field!r} value; fill it in or drop the line"
    )
  if len(value) > MAX_ID_CHARS:
    raise DataFormatError(
      path,
      line_no,
      f"field {field!r} is {len(value)} characters long, over the "
      f"{MAX_ID_CHARS} allowed for an id ({shown(value)}); check the "
      "delimiter and quoting of this line",
    )


def decimal_id(path, line_no: int, value: str, field: str) -> str:
  """An integer id written as ASCII digits, returned as canonical digits.

  Leading zeros are dropped ("007" is item 7, as for an integer column);
  ids beyond 64 bits stay exact since they are kept as strings.

  Raises:
    DataFormatError: empty, longer than ``MAX_ID_CHARS`` or not digits only.
  """
  _check_length(path, line_no, value, field)
  if not _DIGITS.fullmatch(value):
    raise DataFormatError(
      path,
      line_no,
      f"field {field!r} is not a decimal id: {shown(value)}; ids are digits "
      "0-9 only (no sign, spaces, separators or other characters)",
    )
  return value.lstrip("0") or "0"


def string_id(path, line_no: int, value: str, field: str) -> str:
  """A string id: 1..``MAX_ID_CHARS`` printable characters, no whitespace.

  Raises:
    DataFormatError: empty, too long, or holding whitespace or invisible
      characters (control characters, byte-order marks...).
  """
  _check_length(path, line_no, value, field)
  if not value.isprintable() or any(c.isspace() for c in value):
    raise DataFormatError(
      path,
      line_no,
      f"field {field!r} holds whitespace or an invisible character: "
      f"{shown(value)}; ids are printable characters without spaces",
    )
  return value


def rating(
  path,
  line_no: int,
  value: str,
  low: float,
  high: float,
  step: float | None = None,
) -> float:
  """A rating of the form ``4`` or ``3.5`` within [low, high].

  Args:
    step: when set, the rating must be a whole multiple of it (0.5 for
      MovieLens latest-small, 1 for ML-100K / ML-1M).

  Raises:
    DataFormatError: not a plain number, or outside the format's range.
  """
  if not _UNSIGNED.fullmatch(value):
    raise DataFormatError(
      path,
      line_no,
      f"field 'rating' is not a number: {shown(value)}; ratings are plain "
      f"decimals from {low:g} to {high:g}",
    )
  number = float(value)
  off_step = step is not None and not float(number / step).is_integer()
  if not low <= number <= high or off_step:
    steps = f" in steps of {step:g}" if step is not None else ""
    raise DataFormatError(
      path,
      line_no,
      f"rating {shown(value)} is outside this format's range {low:g}.."
      f"{high:g}{steps}; fix or drop the line",
    )
  return number


def finite_number(path, line_no: int, value: str, field: str) -> float:
  """A finite decimal number (``-3``, ``4.5``, ``1.6e9``) of a user file.

  Raises:
    DataFormatError: not a plain decimal number, or too large for float64.
  """
  number = float(value) if _NUMBER.fullmatch(value) else math.nan
  if not math.isfinite(number):
    raise DataFormatError(
      path,
      line_no,
      f"field {field!r} is not a finite number: {shown(value)}; write a "
      "plain decimal such as 4.5 or 1700000000",
    )
  return number


def timestamp(path, line_no: int, value: str, field: str = "timestamp") -> int:
  """Seconds since the epoch written as ASCII digits, within int64.

  Raises:
    DataFormatError: not digits only, or beyond int64.
  """
  if not _DIGITS.fullmatch(value) or len(value) > 19 or int(value) > _MAX_INT64:
    raise DataFormatError(
      path,
      line_no,
      f"field {field!r} is not a timestamp: {shown(value)}; write whole "
      f"seconds since 1970 as digits (at most {_MAX_INT64})",
    )
  return int(value)
