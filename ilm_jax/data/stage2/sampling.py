"""Stage-2 prompts sampled from a split: training mixture and evaluation.

Training prompts come from training prefixes only (``sequential_examples``
and ``train_sequences``); evaluation prompts use ``split.history``.
"""

from __future__ import annotations

import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import ItemIndex
from ilm_jax.data.split import LeaveOneOutSplit

# Conversational evaluation wish for a target without genres or tags.
GENERIC_WISH = "something I will enjoy"


def training_prompts(
  split: LeaveOneOutSplit,
  item_index: ItemIndex,
  tasks,
  per_task: int,
  max_history: int,
  seed: int = 0,
) -> list[P.Prompt]:
  """A multitask mixture of training prompts from training prefixes only.

  Args:
    split: the leave-one-out split.
    item_index: item identifiers (answers of item tasks).
    tasks: task names (``prompts.TASKS`` and ``prompts.GROUNDING_TASKS``).
    per_task: at most this many prompts per task (drawn at random).
    max_history: history cap of sequential / conversational prompts.
    seed: seeds sampling and template choice.

  Returns:
    Prompts with answers, shuffled.
  """
  rng = np.random.default_rng(seed)
  catalog = split.catalog
  users, histories, targets = split.sequential_examples()
  out: list[P.Prompt] = []

  def pick(n):
    return rng.permutation(n)[:per_task]

  for task in tasks:
    seen = P.templates(task, seen=True)

    def tpl(choices=seen):
      return choices[rng.integers(len(choices))]

    made = []
    if task in (P.SEQUENTIAL, P.CONVERSATIONAL):
      for row in rng.permutation(len(users)):
        if len(made) >= per_task:
          break
        hist = histories[row][histories[row] >= 0][-max_history:]
        target = int(targets[row])
        wish = ""
        if task == P.CONVERSATIONAL:
          wish = P.wish_text(catalog, target, rng)
          if not wish:
            continue
        made.append(
          P.render(
            tpl(),
            user=int(users[row]),
            history=hist,
            wish=wish,
            answer=item_index.identifier(target),
            target_item=target,
          )
        )
    elif task == P.STRAIGHTFORWARD:
      for u in pick(split.num_users):
        seq = split.train_sequences[u]
        target = int(seq[rng.integers(len(seq))])
        made.append(
          P.render(
            tpl(),
            user=int(u),
            answer=item_index.identifier(target),
            target_item=target,
          )
        )
    elif task == P.DESCRIPTION:
      consumed = np.unique(np.concatenate(split.train_sequences))
      for i in consumed[pick(len(consumed))]:
        text = catalog.item_text(int(i))
        if text:
          made.append(P.render(tpl(), item=int(i), answer=text))
    elif task in P.GROUNDING_TASKS:
      # Items users consumed in training: their CF rows carry signal.
      consumed = np.unique(np.concatenate(split.train_sequences))
      for i in consumed[pick(len(consumed))]:
        i = int(i)
        if task == P.IDENTIFY:
          made.append(
            P.render(
              tpl(), item=i, answer=item_index.identifier(i), target_item=i
            )
          )
        elif title := P.item_title(catalog, i):
          made.append(P.render(tpl(), item=i, answer=title))
    elif task == P.PROFILE:
      for u in pick(split.num_users):
        text = P.profile_text(catalog, split.train_sequences[u])
        if text:
          made.append(P.render(tpl(), user=int(u), answer=text))
    else:
      raise ValueError(
        f"unknown stage-2 task {task!r}; known: {P.TASKS + P.GROUNDING_TASKS}"
      )
    out.extend(made)
  return [out[i] for i in rng.permutation(len(out))]


def evaluation_prompts(
  split: LeaveOneOutSplit,
  split_name: str,
  seen: bool,
  users,
  task: str = P.SEQUENTIAL,
  max_history: int | None = None,
  seed: int = 0,
) -> list[P.Prompt]:
  """Item-task prompts of held-out users, templates rotated over users.

  Args:
    split: the split.
    split_name: "valid" or "test" (decides the history and the target).
    seen: use training templates (True) or held-out ones (False).
    users: user indices to evaluate.
    task: SEQUENTIAL, STRAIGHTFORWARD or CONVERSATIONAL.
    max_history: history cap (default: the split's).
    seed: seeds the conversational wish (a genre or tag of the target).

  Returns:
    Prompts without answers whose ``target_item`` is the held-out item. A
    conversational prompt whose target has neither genres nor tags gets a
    generic wish, so every user keeps a prompt.
  """
  if task not in P.ITEM_TASKS:
    raise ValueError(f"item evaluation supports {P.ITEM_TASKS}, not {task!r}")
  rng = np.random.default_rng([seed, split_name == "test"])
  choices = P.templates(task, seen)
  targets = split.targets(split_name)
  out = []
  for n, u in enumerate(users):
    u = int(u)
    hist = split.history(u, split_name)
    if max_history:
      hist = hist[-max_history:]
    wish = ""
    if task == P.CONVERSATIONAL:
      wish = P.wish_text(split.catalog, int(targets[u]), rng) or GENERIC_WISH
    out.append(
      P.render(
        choices[n % len(choices)],
        user=u,
        history=hist,
        wish=wish,
        target_item=int(targets[u]),
      )
    )
  return out


def text_evaluation_prompts(
  split: LeaveOneOutSplit, task: str, seen: bool, entities
) -> list[P.Prompt]:
  """Text-task prompts whose ``answer`` is the reference text.

  Args:
    split: the split (profiles come from training sequences only).
    task: DESCRIPTION (``entities`` are items) or PROFILE (users).
    seen: training templates (True) or held-out ones (False).
    entities: item or user indices; those without reference text are
      skipped.

  Returns:
    Prompts, templates rotated over entities.
  """
  if task not in (P.DESCRIPTION, P.PROFILE):
    raise ValueError(f"text evaluation supports description/profile, {task!r}")
  choices = P.templates(task, seen)
  out = []
  for e in entities:
    e = int(e)
    if task == P.DESCRIPTION:
      text = split.catalog.item_text(e)
      slot = {"item": e}
    else:
      text = P.profile_text(split.catalog, split.train_sequences[e])
      slot = {"user": e}
    if text:
      out.append(
        P.render(choices[len(out) % len(choices)], answer=text, **slot)
      )
  return out
