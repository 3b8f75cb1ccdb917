"""A conversation with the recommender: what each line says, what it keeps.

One line is one turn. A turn holds clauses separated by ``|``; each clause
starts with what it is about, and anything else is a wish in words:

  liked: Alien (1979); Terminater 2      items the user liked (``;`` apart:
                                         titles may hold commas)
  disliked: Titanic                      items never to recommend
  want: something funnier                the wish (replaces the last one)
  user: 42                               speak as the dataset's user 42
  reset                                  forget everything said so far
  something with robots                  no keyword: a wish

Keywords are matched case-insensitively, with a few spellings each
(``loved``, ``i liked``, ``hated``, ``i want``, ...). Titles are looked up
fuzzily (``titles``); one that matches nothing is reported with the
nearest titles and the rest of the turn still counts. Context persists
across turns: liked and disliked items accumulate (naming an item again
moves it), the wish stays until replaced.
"""

from __future__ import annotations

import dataclasses
import re

from ilm_jax.serve.titles import TitleNotFoundError

LIKE, DISLIKE, WISH, USER, RESET = "like", "dislike", "wish", "user", "reset"
_KEYWORDS = {
  LIKE: (
    "liked",
    "like",
    "loved",
    "love",
    "enjoyed",
    "i liked",
    "i loved",
    "i enjoyed",
    "i like",
    "i love",
  ),
  DISLIKE: (
    "disliked",
    "dislike",
    "hated",
    "hate",
    "i disliked",
    "i did not like",
    "i didn't like",
    "i hated",
  ),
  WISH: ("want", "wish", "i want", "i would like", "ask", "looking for"),
  USER: ("user", "i am user"),
}
_CLAUSE = re.compile(
  r"^\s*(?P<key>"
  + "|".join(
    sorted(
      (re.escape(k) for ks in _KEYWORDS.values() for k in ks),
      key=len,
      reverse=True,
    )
  )
  + r")\s*:\s*(?P<rest>.*)$",
  re.IGNORECASE,
)
_KIND_OF = {k: kind for kind, ks in _KEYWORDS.items() for k in ks}


@dataclasses.dataclass(frozen=True)
class Clause:
  """One parsed clause: its kind and its text."""

  kind: str
  text: str


def parse_turn(line: str) -> list[Clause]:
  """The clauses of one line (module doc); [] for a blank line or comment.

  Raises:
    ValueError: a ``user:`` clause without a user.
  """
  line = line.strip()
  if not line or line.startswith("#"):
    return []
  out = []
  for part in line.split("|"):
    part = part.strip()
    if not part:
      continue
    if part.lower() == RESET:
      out.append(Clause(RESET, ""))
      continue
    m = _CLAUSE.match(part)
    if m is None:
      out.append(Clause(WISH, part))
      continue
    kind = _KIND_OF[m.group("key").lower()]
    rest = m.group("rest").strip()
    if kind == USER and not rest:
      raise ValueError(f"{part!r}: name the user, e.g. 'user: 42'")
    out.append(Clause(kind, rest))
  return out


@dataclasses.dataclass
class Context:
  """What the conversation has established so far.

  Attributes:
    user: the dataset's user id spoken as, or None for a new user.
    liked: item indices liked, oldest first.
    disliked: item indices disliked.
    wish: the latest wish ("" = none).
  """

  user: str | None = None
  liked: list[int] = dataclasses.field(default_factory=list)
  disliked: list[int] = dataclasses.field(default_factory=list)
  wish: str = ""


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A title as typed and the item it was taken to mean (-1: none)."""

  kind: str  # LIKE or DISLIKE
  typed: str
  item: int
  note: str  # the matched title, or why nothing matched


def apply(context: Context, clauses, find) -> list[Resolved]:
  """Updates ``context`` with a turn's clauses.

  Args:
    context: the conversation so far (changed in place).
    clauses: ``parse_turn``'s result.
    find: title -> ``titles.Match`` (raises ``TitleNotFoundError``).

  Returns:
    Every title named in the turn and what it resolved to.
  """
  resolved = []
  for clause in clauses:
    if clause.kind == RESET:
      context.__init__()
    elif clause.kind == WISH:
      context.wish = clause.text
    elif clause.kind == USER:
      context.user = clause.text
    else:
      for typed in (t.strip() for t in clause.text.split(";")):
        if not typed:
          continue
        try:
          match = find(typed)
        except TitleNotFoundError as e:
          resolved.append(Resolved(clause.kind, typed, -1, str(e)))
          continue
        resolved.append(Resolved(clause.kind, typed, match.item, match.title))
        keep, drop = (
          (context.liked, context.disliked)
          if clause.kind == LIKE
          else (context.disliked, context.liked)
        )
        for group in (keep, drop):
          if match.item in group:
            group.remove(match.item)
        keep.append(match.item)
  return resolved
