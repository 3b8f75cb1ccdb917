"""Stage 2's declared evaluations: ``"kind:task:split:templates"`` entries.

``config.stage2.evaluations`` lists what stage 2 evaluates, one short
string per evaluation, parsed here (and only here) into ``Evaluation``:

* ``generate:<item task>:<split>:<templates>``: trie-constrained beam
  search ranks the catalogue (and, with the retrieval head trained, the
  head's full ranking beside it);
* ``text:<description|profile>:-:<templates>`` (or ``text:<task>:<templates>``):
  greedy decoding scored by semantic consistency; no split applies;
* ``rerank:<re-ranking task>:<split>:<templates>[:<retriever>]``: the LLM
  re-ranks a retriever's top N: ``als``, ``sasrec`` or ``retrieval_head``
  (default: ``stage2.rerank.retriever``), so one run can report re-ranking
  of several retrievers' candidates side by side.

Results are keyed by ``Evaluation.name`` and every entry carries its own
fields (``Evaluation.entry``), so reports read fields and never parse keys.
Plain data: importing this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ilm_jax.data import prompts as P

GENERATE = "generate"
TEXT = "text"
RERANK = "rerank"
KINDS = (GENERATE, TEXT, RERANK)
TEXT_TASKS = (P.DESCRIPTION, P.PROFILE)
# Tasks each kind evaluates.
KIND_TASKS = {
  GENERATE: P.ITEM_TASKS,
  TEXT: TEXT_TASKS,
  RERANK: P.RERANK_TASKS,
}
# Retrievers whose top N a re-ranking evaluation can take.
RETRIEVERS = ("als", "retrieval_head", "sasrec")
SPLITS = ("valid", "test")
TEMPLATE_SETS = ("seen", "unseen")
# The split field of text evaluations, which use no held-out split.
NO_SPLIT = "-"
FORMAT = "kind:task:split:templates"


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One declared evaluation.

  Attributes:
    kind: "generate", "text" or "rerank".
    task: a task of that kind (``KIND_TASKS``).
    split: "valid" or "test"; ``NO_SPLIT`` for text evaluations.
    templates: "seen" (training) or "unseen" (held-out) templates.
    retriever: re-ranking: whose candidates (``RETRIEVERS``); "" for the
      config's ``stage2.rerank.retriever`` (and for other kinds).
  """

  kind: str
  task: str
  split: str
  templates: str
  retriever: str = ""

  @property
  def name(self) -> str:
    """The canonical entry, the key of this evaluation's results."""
    name = f"{self.kind}:{self.task}:{self.split}:{self.templates}"
    return f"{name}:{self.retriever}" if self.retriever else name

  @property
  def seen(self) -> bool:
    return self.templates == "seen"

  @property
  def label(self) -> str:
    """Row name in reports: ``task/split/templates`` (text: no split)."""
    parts = (self.task, self.split, self.templates, self.retriever)
    return "/".join(p for p in parts if p and p != NO_SPLIT)

  def entry(self, **values) -> dict:
    """This evaluation's result entry: its fields plus ``values``."""
    return {**dataclasses.asdict(self), **values}

  @classmethod
  def of_entry(cls, entry: dict) -> Evaluation:
    """The evaluation a result entry (``entry``) belongs to (entries
    written before a field existed take its default)."""
    return cls(
      *(
        entry[f.name]
        if f.default is dataclasses.MISSING
        else entry.get(f.name, f.default)
        for f in dataclasses.fields(cls)
      )
    )


def _error(text: str, problem: str) -> ValueError:
  return ValueError(f"stage2.evaluations entry {text!r}: {problem}")


def parse_one(text: str) -> Evaluation:
  """``"kind:task:split:templates"`` -> Evaluation.

  Text evaluations may omit the split (``"text:profile:unseen"``);
  re-ranking ones may name a retriever fifth (``"...:unseen:sasrec"``).

  Raises:
    ValueError: naming the entry, what is wrong and the allowed values.
  """
  if not isinstance(text, str):
    raise _error(str(text), f"not a string {FORMAT!r}")
  parts = [p.strip() for p in text.split(":")]
  if len(parts) == 3 and parts[0] == TEXT:
    parts.insert(2, NO_SPLIT)
  retriever = ""
  if len(parts) == 5 and parts[0] == RERANK:
    retriever = parts.pop()
    if retriever not in RETRIEVERS:
      raise _error(text, f"retriever {retriever!r} not in {RETRIEVERS}")
  if len(parts) != 4:
    raise _error(
      text,
      f"expected {FORMAT!r} (text: 'text:task:templates' or "
      f"'text:task:{NO_SPLIT}:templates'; rerank: an optional fifth "
      "field names the retriever)",
    )
  kind, task, split, templates = parts
  if kind not in KINDS:
    raise _error(text, f"kind {kind!r} not in {KINDS}")
  if task not in KIND_TASKS[kind]:
    raise _error(
      text, f"task {task!r} is not a {kind!r} task; allowed: {KIND_TASKS[kind]}"
    )
  if kind == TEXT:
    if split != NO_SPLIT:
      raise _error(
        text,
        f"text evaluations use no split: write {NO_SPLIT!r} or omit it, not "
        f"{split!r}",
      )
  elif split not in SPLITS:
    raise _error(text, f"split {split!r} not in {SPLITS}")
  if templates not in TEMPLATE_SETS:
    raise _error(text, f"templates {templates!r} not in {TEMPLATE_SETS}")
  return Evaluation(kind, task, split, templates, retriever)


def parse(entries: str | Iterable[str]) -> tuple[Evaluation, ...]:
  """The declared list (``config.stage2.evaluations``) as Evaluations.

  Args:
    entries: ``"kind:task:split:templates"`` strings (one string is one
      entry), in the order results and reports keep.

  Returns:
    The evaluations, in declared order.

  Raises:
    ValueError: a malformed entry (``parse_one``) or one declared twice.
  """
  if isinstance(entries, str):
    entries = (entries,)
  out, names = [], set()
  for text in entries:
    evaluation = parse_one(text)
    if evaluation.name in names:
      raise _error(text, "declared twice")
    names.add(evaluation.name)
    out.append(evaluation)
  return tuple(out)


def of_kind(
  evaluations: Iterable[Evaluation], *kinds: str
) -> tuple[Evaluation, ...]:
  """The evaluations whose kind is one of ``kinds``, in order."""
  return tuple(e for e in evaluations if e.kind in kinds)


def result_entries(results: dict, kind: str) -> list[dict]:
  """Entries of ``results["evaluations"]`` of one kind, in results order."""
  return [
    entry
    for entry in results.get("evaluations", {}).values()
    if entry.get("kind") == kind
  ]


def find_entry(
  results: dict,
  kind: str,
  task: str,
  split: str,
  templates: str,
  retriever: str = "",
) -> dict | None:
  """The result entry of one evaluation (matched on its fields), or None
  when it did not run."""
  want = Evaluation(kind, task, split, templates, retriever)
  for entry in result_entries(results, kind):
    if Evaluation.of_entry(entry) == want:
      return entry
  return None
