"""Fuzzy title lookup: "Terminater 2" finds "Terminator 2: Judgment Day
(1991)".

Titles and queries are normalised alike (lower case, accents and
punctuation dropped, a trailing article moved to the front as in
"American President, The", the year set apart), then matched in three
steps: the whole normalised title, the title before a colon or bracket
("Terminator 2"), and finally difflib's similarity ratio over both forms,
tolerant of typos. A year in the query must agree when given; without one,
ties go to the more popular item, so "Alien" means the 1979 film rather
than a remake.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(.*), (the|a|an|les|la|le|il|das|der|die|el)$")
# Lowest difflib ratio accepted as the same title: one or two typos in a
# ten-letter title pass; a different word does not.
MIN_RATIO = 0.75
SUGGESTIONS = 3


def split_year(title: str) -> tuple[str, str]:
  """("Alien", "1979") from "Alien (1979)"; ("Alien", "") without a year."""
  m = _YEAR.search(title.strip())
  if not m:
    return title.strip(), ""
  return title.strip()[: m.start()].strip(), m.group(1)


def normalise(name: str) -> str:
  """Lower case, ASCII, no punctuation, trailing article moved to the
  front ("American President, The" -> "the american president")."""
  text = unicodedata.normalize("NFKD", name)
  text = "".join(ch for ch in text if not unicodedata.combining(ch))
  text = text.lower().strip()
  # Alternative titles in brackets, e.g. "City of Lost Children, The (Cité
  # des enfants perdus, La)": the first one is the name to match.
  text = re.sub(r"\s*\(.*\)\s*$", "", text) or text
  m = _ARTICLE.match(text)
  if m:
    text = f"{m.group(2)} {m.group(1)}"
  text = re.sub(r"[^a-z0-9]+", " ", text)
  return " ".join(text.split())


def short_form(name: str) -> str:
  """The normalised title before a colon or a dash ("terminator 2")."""
  head = re.split(r"[:\u2013\u2014]| - ", name, maxsplit=1)[0]
  return normalise(head)


@dataclasses.dataclass(frozen=True)
class Match:
  """One lookup result.

  Attributes:
    item: the item index.
    title: its catalogue title.
    score: 1.0 for an exact (normalised) match, else difflib's ratio.
  """

  item: int
  title: str
  score: float


class TitleNotFoundError(LookupError):
  """No catalogue title is close enough; the message names the nearest."""


class TitleIndex:
  """Fuzzy lookup over a catalogue's titles.

  Args:
    titles: str[I] the catalogue titles (item index = position).
    popularity: float[I] training interactions per item; breaks ties
      (None: all equal, the lower index wins).
  """

  def __init__(self, titles: Sequence[str], popularity=None):
    self.titles = [str(t) for t in titles]
    n = len(self.titles)
    self.popularity = (
      np.zeros(n) if popularity is None else np.asarray(popularity, float)
    )
    self.years = [split_year(t)[1] for t in self.titles]
    self._by_key: dict[str, list[int]] = collections.defaultdict(list)
    for i, title in enumerate(self.titles):
      name = split_year(title)[0]
      for key in {normalise(name), short_form(name)}:
        if key:
          self._by_key[key].append(i)
    self._keys = list(self._by_key)

  def _best(self, items, year: str) -> int | None:
    if year:
      items = [i for i in items if self.years[i] == year]
    if not items:
      return None
    # Most popular first, then the lower index: deterministic.
    return min(items, key=lambda i: (-self.popularity[i], i))

  def lookup(self, query: str) -> Match:
    """The catalogue item a title names, tolerating typos and no year.

    Raises:
      TitleNotFoundError: nothing close enough; the message lists the nearest
        titles so the user can retype.
    """
    name, year = split_year(query)
    key = normalise(name)
    if not key:
      raise TitleNotFoundError(f"empty title {query!r}")
    exact = self._best(self._by_key.get(key, []), year)
    if exact is not None:
      return Match(exact, self.titles[exact], 1.0)
    scored = self._close(key)
    for ratio, k in scored:
      if ratio < MIN_RATIO:
        break
      found = self._best(self._by_key[k], year)
      if found is not None:
        return Match(found, self.titles[found], ratio)
    near = [self.titles[self._best(self._by_key[k], "")] for _, k in scored]
    raise TitleNotFoundError(
      f"no title close to {query!r}"
      + (f"; nearest: {'; '.join(near[:SUGGESTIONS])}" if near else "")
    )

  def _close(self, key: str) -> list[tuple[float, str]]:
    """(ratio, key) of the closest keys, best first, ties by key."""
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(key)
    out = []
    for k in self._keys:
      matcher.set_seq1(k)
      # Cheap upper bounds first: most keys are far from the query.
      if matcher.real_quick_ratio() < MIN_RATIO / 2:
        continue
      if matcher.quick_ratio() < MIN_RATIO / 2:
        continue
      out.append((matcher.ratio(), k))
    out.sort(key=lambda rk: (-rk[0], rk[1]))
    return out[: max(SUGGESTIONS, 10)]
