"""One chat turn in text: apply what the user said, recommend, print.

``launch/chat.py`` reads lines (a script or stdin) and hands each to
``Chat.turn``; the notebook calls the same, so both print alike:

  > liked: Alien; Terminater 2
    understood: liked Alien (1979); liked Terminator 2: Judgment Day (1991)
      ("Terminater 2")
    context: 2 liked, 0 disliked, no wish (new user)
     1. Aliens (1986)  [id 1200]  Action|Horror|Sci-Fi
        why: <the model's description of the item>
"""

from __future__ import annotations

import textwrap

from ilm_jax.data import prompts as P
from ilm_jax.serve import conversation as conv
from ilm_jax.serve.recommender import Recommender

# Longest "why" line printed: the model's description, first line only.
REASON_CHARS = 100


def reason_of(description: str) -> str:
  """The first non-empty line of a description, shortened."""
  for line in description.splitlines():
    if line.strip():
      return textwrap.shorten(line.strip(), REASON_CHARS, placeholder="...")
  return "(no description)"


class Chat:
  """A conversation over one recommender.

  Args:
    recommender: the Recommender.
    k: items per answer.
    mode: ``Recommender.recommend``'s mode.
    reasons: print the model's description of each item (one greedy
      decoding per new item).
  """

  def __init__(
    self,
    recommender: Recommender,
    k: int = 10,
    mode: str = "rerank",
    reasons: bool = True,
  ):
    self.recommender = recommender
    self.k = k
    self.mode = mode
    self.reasons = reasons
    self.context = conv.Context()

  def turn(self, line: str) -> list[str] | None:
    """The printed lines of one turn (None for a blank line or comment).

    Raises:
      ValueError: a malformed clause (``conversation.parse_turn``).
    """
    clauses = conv.parse_turn(line)
    if not clauses:
      return None
    r = self.recommender
    out = [f"> {line.strip()}"]
    resolved = conv.apply(self.context, clauses, r.find)
    if resolved:
      out.append("  understood: " + "; ".join(self._said(x) for x in resolved))
    c = self.context
    if c.user is not None:
      r.user_index(c.user)  # fail now, naming the unknown user
    who = f"user {c.user}" if c.user is not None else "new user"
    wish = f"wish: {c.wish!r}" if c.wish else "no wish"
    out.append(
      f"  context: {len(c.liked)} liked, {len(c.disliked)} disliked, "
      f"{wish} ({who})"
    )
    recs = r.recommend(
      user=c.user,
      history=c.liked,
      wish=c.wish,
      k=self.k,
      mode=self.mode,
      disliked=c.disliked,
    )
    whys = r.describe_many([x.item for x in recs]) if self.reasons else []
    for n, rec in enumerate(recs):
      genres = ", ".join(P.item_genres(r.catalog, rec.item))
      out.append(
        f"  {n + 1:2d}. {rec.title}  [id {rec.item_id}]"
        + (f"  {genres}" if genres else "")
        + (f"  ({rec.source})" if rec.source != self.mode else "")
      )
      if whys:
        out.append(f"      why: {reason_of(whys[n])}")
    return out

  @staticmethod
  def _said(x: conv.Resolved) -> str:
    verb = "liked" if x.kind == conv.LIKE else "disliked"
    if x.item < 0:
      return f"{verb} ?? {x.note}"
    if x.note.lower().startswith(x.typed.lower()):
      return f"{verb} {x.note}"
    return f'{verb} {x.note} (typed "{x.typed}")'
