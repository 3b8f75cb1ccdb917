"""Stage-2 task templates and their rendering into prompt segments.

A template is a sentence with slots. ``{user}`` and ``{item}`` hold one
entity, ``{item_soft}`` an item shown by its soft tokens alone and
``{item_id}`` one shown by its identifier alone (the grounding tasks, which
teach the frozen LLM what an identifier stands for), ``{history}`` a list of
items, ``{candidates}`` the retrieved items a
re-ranking prompt asks the model to choose from, and ``{wish}`` a phrase in
words (the conversational request). Rendering gives a tuple of segments,
each either text or an entity; ``data.stage2.encoding`` later turns an entity
into its soft tokens (and, optionally, its identifier as text) and text into
token ids.

Every task has several *seen* templates, used for training, and *unseen*
ones, held out for evaluation, so a score on unseen prompts says whether the
model learned the task rather than the wording.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string

import numpy as np

from ilm_jax.data.dataset import Catalog

# Output kinds: an item identifier (trie-constrained at evaluation) or text.
ITEM_OUTPUT = "item"
TEXT_OUTPUT = "text"

SEQUENTIAL = "sequential"
STRAIGHTFORWARD = "straightforward"
DESCRIPTION = "description"
PROFILE = "profile"
CONVERSATIONAL = "conversational"
TASKS = (SEQUENTIAL, STRAIGHTFORWARD, DESCRIPTION, PROFILE, CONVERSATIONAL)
ITEM_TASKS = (SEQUENTIAL, STRAIGHTFORWARD, CONVERSATIONAL)
# Re-ranking: choose the held-out item among retrieved candidates, from the
# user and history (RERANK) or the history and a wish in words.
RERANK = "rerank"
RERANK_CONVERSATIONAL = "rerank_conversational"
RERANK_TASKS = (RERANK, RERANK_CONVERSATIONAL)
# Identifier grounding (as LC-Rec's item-index tasks): an item's soft tokens
# -> its identifier (IDENTIFY), its identifier -> its title (NAME). Without
# them the identifiers a generated answer spells are opaque strings to the
# frozen LLM, learned only through the recommendation answers.
IDENTIFY = "identify"
NAME = "name"
GROUNDING_TASKS = (IDENTIFY, NAME)
ALL_TASKS = TASKS + RERANK_TASKS + GROUNDING_TASKS
# Tasks whose answer is an item (generated identifier or chosen candidate):
# the tasks that train recommendation itself.
RANKING_TASKS = ITEM_TASKS + RERANK_TASKS

ENTITY_SLOTS = ("user", "item", "item_soft", "item_id", "history", "candidates")
# Segment kinds of entities: a single user or item, or a member of a list.
USER, ITEM, HISTORY, CANDIDATE = "user", "item", "history", "candidate"
# A single item shown by its soft tokens only / by its identifier only.
ITEM_SOFT, ITEM_NAMED = "item_soft", "item_id"
LIST_KINDS = (HISTORY, CANDIDATE)
TEXT_SLOTS = ("wish",)
HISTORY_SEPARATOR = ", "
# A profile names at most this many genres and tags.
PROFILE_GENRES = 3
PROFILE_TAGS = 3


@dataclasses.dataclass(frozen=True)
class Template:
  """One wording of a task.

  Attributes:
    task: one of TASKS.
    text: the prompt with ``{user}``, ``{item}``, ``{history}``, ``{wish}``.
    seen: True for training templates, False for held-out ones.
  """

  task: str
  text: str
  seen: bool

  @property
  def slots(self) -> tuple[str, ...]:
    return tuple(
      name for _, name, _, _ in string.Formatter().parse(self.text) if name
    )

  @property
  def output(self) -> str:
    if self.task in (DESCRIPTION, PROFILE, NAME):
      return TEXT_OUTPUT
    return ITEM_OUTPUT


def _templates(task: str, seen: list[str], unseen: list[str]):
  return [Template(task, t, True) for t in seen] + [
    Template(task, t, False) for t in unseen
  ]


TEMPLATES: tuple[Template, ...] = tuple(
  _templates(
    SEQUENTIAL,
    [
      "User {user} watched {history} in this order. What will the user "
      "watch next?",
      "Here is the viewing history of user {user}: {history}. Predict the "
      "next item the user will choose.",
      "Given that {user} consumed {history}, which item comes next?",
    ],
    [
      "Considering the past items {history} of user {user}, recommend the "
      "item they are most likely to pick next.",
      "{user} has gone through {history}. Suggest their next item.",
    ],
  )
  + _templates(
    STRAIGHTFORWARD,
    [
      "Recommend an item to user {user}.",
      "What would user {user} enjoy?",
      "Pick one item that {user} is likely to like.",
    ],
    [
      "Which item should we show to user {user}?",
      "Suggest something for {user} to watch.",
    ],
  )
  + _templates(
    DESCRIPTION,
    [
      "Describe item {item}.",
      "What is {item} about?",
      "Give the title and genres of {item}.",
    ],
    [
      "Tell me about the item {item}.",
      "Write a short description of {item}.",
    ],
  )
  + _templates(
    PROFILE,
    [
      "Describe the tastes of user {user}.",
      "What kind of items does {user} like?",
      "Summarise the preferences of user {user}.",
    ],
    [
      "Write a profile of user {user}.",
      "What does {user} enjoy watching?",
    ],
  )
  + _templates(
    CONVERSATIONAL,
    [
      "I recently watched {history}. Now I want {wish}. What do you recommend?",
      "My history: {history}. Can you suggest {wish}?",
      "After {history}, I am in the mood for {wish}. Any idea?",
    ],
    [
      "I liked {history}. Please find me {wish}.",
      "Based on {history}, what would be {wish} for me?",
    ],
  )
  + _templates(
    RERANK,
    [
      "User {user} watched {history}. Candidates: {candidates}. Which "
      "candidate will the user watch next?",
      "Here is what {user} watched: {history}. Choose the item they pick "
      "next from {candidates}.",
      "Given the history {history} of user {user}, which of {candidates} "
      "comes next?",
    ],
    [
      "{user} recently saw {history}. Out of {candidates}, which one will "
      "they choose?",
      "Viewing history of user {user}: {history}. Options: {candidates}. "
      "Name the best option.",
    ],
  )
  + _templates(
    RERANK_CONVERSATIONAL,
    [
      "I watched {history}. Now I want {wish}. Pick one of {candidates}.",
      "My history: {history}. Which of {candidates} is {wish}?",
      "After {history}, I am in the mood for {wish}. Options: {candidates}. "
      "Which one?",
    ],
    [
      "I liked {history}. From {candidates}, find me {wish}.",
      "Based on {history}, which of {candidates} would be {wish} for me?",
    ],
  )
  + _templates(
    IDENTIFY,
    [
      "Which item identifier stands for {item_soft}?",
      "Name the identifier of the item {item_soft}.",
      "{item_soft} is known by which identifier?",
    ],
    [
      "What is the identifier of {item_soft}?",
      "Give the item identifier for {item_soft}.",
    ],
  )
  + _templates(
    NAME,
    [
      "What is the title of {item_id}?",
      "Which item is {item_id}?",
      "{item_id} is the identifier of which item?",
    ],
    [
      "Give the title of the item {item_id}.",
      "Name the item called {item_id}.",
    ],
  )
)


def templates(task: str, seen: bool) -> list[Template]:
  """The seen (training) or unseen (held-out) templates of a task."""
  if task not in ALL_TASKS:
    raise ValueError(f"unknown stage-2 task {task!r}; known: {ALL_TASKS}")
  return [t for t in TEMPLATES if t.task == task and t.seen == seen]


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A rendered prompt and what it should produce.

  Attributes:
    task: the task.
    template: index of the template in ``TEMPLATES`` (-1 for another).
    segments: ("text", str) or (kind, index) tuples in reading order, kind
      one of USER, ITEM (a single item), ITEM_SOFT / ITEM_NAMED (a single
      item by its soft tokens / identifier only), HISTORY or CANDIDATE
      (list members; both are items).
    answer: the text the model should generate (an identifier or prose);
      None for evaluation prompts.
    target_item: the item an item task asks for (-1 for text tasks).
    user: the user the prompt is about (-1 for item description).
    candidates: re-ranking prompts: the listed items, in list order.
  """

  task: str
  template: int
  segments: tuple[tuple[str, object], ...]
  answer: str | None
  target_item: int = -1
  user: int = -1
  candidates: tuple[int, ...] = ()

  def entities(self) -> list[tuple[str, int]]:
    """The (kind, index) entity segments, in order."""
    return [(k, int(v)) for k, v in self.segments if k != "text"]


def render(
  template: Template,
  *,
  user: int = -1,
  item: int = -1,
  history=(),
  wish: str = "",
  answer: str | None = None,
  target_item: int = -1,
  candidates=(),
) -> Prompt:
  """Fills a template's slots.

  Args:
    template: the template.
    user: user index for ``{user}``.
    item: item index for ``{item}``, ``{item_soft}`` or ``{item_id}``.
    history: item indices for ``{history}``, oldest first (-1 entries, i.e.
      padding from ``sequential_examples``, are skipped).
    wish: the phrase for ``{wish}``.
    answer: the expected output text, or None.
    target_item: the item an item task asks for.
    candidates: item indices for ``{candidates}``, in list order.

  Returns:
    A Prompt.

  Raises:
    ValueError: a slot the template uses has no value.
  """
  history = [int(i) for i in history if int(i) >= 0]
  candidates = tuple(int(i) for i in candidates)
  segments: list[tuple[str, object]] = []
  for literal, name, _, _ in string.Formatter().parse(template.text):
    if literal:
      segments.append(("text", literal))
    if name is None:
      continue
    if name == "user":
      _require(user >= 0, template, name)
      segments.append(("user", user))
    elif name in ("item", ITEM_SOFT, ITEM_NAMED):
      _require(item >= 0, template, name)
      segments.append((name, item))
    elif name in ("history", "candidates"):
      members = history if name == "history" else candidates
      _require(len(members) > 0, template, name)
      for pos, i in enumerate(members):
        if pos:
          segments.append(("text", HISTORY_SEPARATOR))
        segments.append((HISTORY if name == "history" else CANDIDATE, i))
    elif name == "wish":
      _require(bool(wish), template, name)
      segments.append(("text", wish))
    else:
      raise ValueError(f"template {template.text!r}: unknown slot {name!r}")
  return Prompt(
    task=template.task,
    template=TEMPLATES.index(template) if template in TEMPLATES else -1,
    segments=tuple(_merge_text(segments)),
    answer=answer,
    target_item=target_item,
    user=user,
    candidates=candidates if "candidates" in template.slots else (),
  )


def _require(ok: bool, template: Template, slot: str):
  if not ok:
    raise ValueError(f"template {template.text!r}: no value for {{{slot}}}")


def _merge_text(segments):
  out = []
  for seg in segments:
    if out and seg[0] == "text" and out[-1][0] == "text":
      out[-1] = ("text", out[-1][1] + seg[1])
    else:
      out.append(seg)
  return out


def _split_list(value: str) -> list[str]:
  return [v.strip() for v in re.split(r"[,|]", value) if v.strip()]


def item_title(catalog: Catalog, item: int) -> str:
  """The item's title, or its whole text line where the source has no title
  field ('' if it has no text at all)."""
  titles = catalog.item_fields.get("title")
  if titles is not None and titles[item]:
    return str(titles[item])
  return catalog.item_text(item)


def item_genres(catalog: Catalog, item: int) -> list[str]:
  """The genres of an item (empty when the catalog has none)."""
  genres = catalog.item_fields.get("genres")
  if genres is None:
    return []
  return [
    g for g in _split_list(str(genres[item])) if g != "(no genres listed)"
  ]


def profile_text(catalog: Catalog, history) -> str:
  """A user's tastes in words, from the genres and tags of their history.

  Args:
    catalog: the split's catalog (tags already rebuilt from training pairs).
    history: item indices the user consumed in training.

  Returns:
    e.g. "Likes Drama, Comedy and Thriller; often tagged: twist ending.",
    or "" when the items carry neither genres nor tags.
  """
  genre_counts: collections.Counter = collections.Counter()
  tag_counts: collections.Counter = collections.Counter()
  tags = catalog.item_fields.get("tags")
  for i in history:
    genre_counts.update(item_genres(catalog, int(i)))
    if tags is not None:
      tag_counts.update(t.lower() for t in _split_list(str(tags[int(i)])))
  parts = []
  top = [g for g, _ in genre_counts.most_common(PROFILE_GENRES)]
  if top:
    parts.append("Likes " + _and_list(top))
  top_tags = [t for t, _ in tag_counts.most_common(PROFILE_TAGS)]
  if top_tags:
    parts.append("often tagged: " + ", ".join(top_tags))
  return ("; ".join(parts) + ".") if parts else ""


def _and_list(words: list[str]) -> str:
  if len(words) == 1:
    return words[0]
  return ", ".join(words[:-1]) + " and " + words[-1]


def wish_text(catalog: Catalog, item: int, rng: np.random.Generator) -> str:
  """A request in words that the item fulfils, e.g. "something from the
  Comedy genre".

  One of the item's genres (or, failing that, tags) is drawn at random; ""
  when the item has neither, so the caller can skip the example.
  """
  choices = item_genres(catalog, item)
  if not choices and "tags" in catalog.item_fields:
    choices = _split_list(str(catalog.item_fields["tags"][item]))
  if not choices:
    return ""
  word = str(choices[rng.integers(len(choices))])
  if item_genres(catalog, item):
    return f"something from the {word} genre"
  return f"something about {word}"
