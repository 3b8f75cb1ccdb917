"""Stage-2 examples: prompts from a split, token ids, slot maps, batches.

An encoded prompt is a token sequence in which some positions are *soft*:
their input embedding is not the token's word embedding but soft token
``slot_query`` of entity ``slot_entity`` (a CF-table row: users first, then
items), or, for the text-only baseline, soft-prompt vector ``slot_query``.
The answer (an item identifier or text, then end-of-sequence) follows the
prompt; the loss is taken on the answer tokens only.

Batches have fixed shapes: each example goes to the shortest length bucket it
fits, so jit compiles once per bucket. The distinct entities of a batch are
listed once (``entities``) and positions refer to them by local index, so the
item encoder runs once per distinct entity.

Training prompts come from training prefixes only (``sequential_examples``
and ``train_sequences``); evaluation prompts use ``split.history``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import ItemIndex
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.models.slots import SOFT_PROMPT, WORD

PROMPT_SUFFIX = "\nAnswer:"
USER_PREFIX = "user_"
# Conversational evaluation wish for a target without genres or tags.
GENERIC_WISH = "something I will enjoy"
CANDIDATE_LABELS = ("identifiers", "letters")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class EntityCoding:
  """How entities and the prompt appear to the LLM.

  Attributes:
    soft_tokens: S soft tokens per entity (K for the ILM, 1 for the MLP
      baseline, 0 for text-only prompts).
    ids_as_text: write an entity's identifier (``item_1234`` /
      ``user_12``) as text before its soft tokens.
    soft_prompt: trainable soft-prompt tokens before the prompt (text-only
      baseline); 0 for none.
    list_tokens: soft tokens of each history or candidate item, the S
      tokens pooled into this many (0 = all S). They are entity tokens
      S .. S + list_tokens - 1 (``ItemLanguageModel.list_tokens``).
    candidate_labels: how a re-ranking prompt names its candidates and how
      the answer names the choice: "identifiers" (the item's identifier,
      ``item_1234``) or "letters" (its place in the list: A, B, ...).
  """

  soft_tokens: int
  ids_as_text: bool = True
  soft_prompt: int = 0
  list_tokens: int = 0
  candidate_labels: str = "identifiers"

  def __post_init__(self):
    if min(self.soft_tokens, self.soft_prompt, self.list_tokens) < 0:
      raise ValueError("soft_tokens, soft_prompt, list_tokens must be >= 0")
    if not self.soft_tokens and not self.ids_as_text:
      raise ValueError("entities need soft tokens or ids as text (or both)")
    if self.pooled and self.soft_tokens % self.list_tokens:
      raise ValueError(
        f"list_tokens {self.list_tokens} must divide the {self.soft_tokens} "
        "soft tokens of an entity"
      )
    if self.candidate_labels not in CANDIDATE_LABELS:
      raise ValueError(
        f"candidate_labels {self.candidate_labels!r} not in {CANDIDATE_LABELS}"
      )

  @property
  def pooled(self) -> bool:
    """List members get pooled tokens (fewer than an entity's S)."""
    return 0 < self.list_tokens < self.soft_tokens

  def tokens_of(self, kind: str) -> tuple[int, int]:
    """(first soft-token index, count) of an entity segment of ``kind``."""
    if kind in P.LIST_KINDS and self.pooled:
      return self.soft_tokens, self.list_tokens
    return 0, self.soft_tokens


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One tokenised prompt (plus answer when training).

  A re-ranking prompt is followed by its candidates' answers, packed: the
  prompt (and the answers' common first tokens) is segment 0, candidate c's
  remaining answer tokens are segment c + 1 with positions that continue
  the prompt's, so one forward pass scores every candidate as if each alone
  followed the prompt (``Decoder`` ``segment_ids``).

  Attributes:
    tokens: int32[n] token ids (pad id at soft positions).
    slot_entity: int32[n] CF-table row, WORD or SOFT_PROMPT per position.
    slot_query: int32[n] which soft token of the entity / soft prompt.
    answer_start: index of the first answer token (== n without answer;
      for re-ranking, the end of the prompt proper).
    target_item: item asked for (-1 for text tasks).
    user: user the prompt is about (-1 if none).
    task: the task.
    target_row: CF row of ``target_item`` (-1 for text tasks); the
      retrieval head's positive.
    segment: int32[n] packing segment (None: all 0).
    positions: int32[n] RoPE positions (None: 0 .. n - 1).
    candidates: int32[N] re-ranking: listed items, in list order.
    label: index of ``target_item`` in ``candidates`` (-1: absent / none).
    cand_logits_at: per candidate, int32[m_c] the token indices whose
      logits predict its answer tokens.
    cand_tokens: per candidate, int32[m_c] its answer tokens (EOS last).
  """

  tokens: np.ndarray
  slot_entity: np.ndarray
  slot_query: np.ndarray
  answer_start: int
  target_item: int = -1
  user: int = -1
  task: str = ""
  target_row: int = -1
  segment: np.ndarray | None = None
  positions: np.ndarray | None = None
  candidates: np.ndarray | None = None
  label: int = -1
  cand_logits_at: tuple[np.ndarray, ...] = ()
  cand_tokens: tuple[np.ndarray, ...] = ()

  @property
  def num_entities(self) -> int:
    return len(np.unique(self.slot_entity[self.slot_entity >= 0]))

  @property
  def is_rerank(self) -> bool:
    return bool(self.cand_tokens)

  @property
  def answer_length(self) -> int:
    """Most answer tokens of one candidate (re-ranking)."""
    return max((len(t) for t in self.cand_tokens), default=0)


class PromptEncoder:
  """Turns Prompts into Encoded token sequences.

  Args:
    tokenizer: the LLM's tokenizer (``ilm_jax.convert.tokenizer.Tokenizer``).
    item_index: identifiers of items.
    num_users: U, so item i is CF row ``U + i``.
    coding: how entities appear.
    max_answer_tokens: answers are cut to this many tokens (EOS included).
  """

  def __init__(
    self,
    tokenizer,
    item_index: ItemIndex,
    num_users: int,
    coding: EntityCoding,
    max_answer_tokens: int = 16,
  ):
    self.tokenizer = tokenizer
    self.item_index = item_index
    self.num_users = num_users
    self.coding = coding
    self.max_answer_tokens = max_answer_tokens
    self.eos_id = int(tokenizer.eos_ids[0])
    self.pad_id = int(tokenizer.pad_id)
    self._cache: dict[tuple[str, bool], list[int]] = {}

  def _text(self, text: str, first: bool) -> list[int]:
    key = (text, first)
    ids = self._cache.get(key)
    if ids is None:
      ids = self.tokenizer.encode(text, add_bos=None if first else False)
      self._cache[key] = ids
    return ids

  def answer_tokens(self, answer: str) -> list[int]:
    """Token ids of an answer, EOS last (also the item trie's sequences)."""
    ids = self._text(" " + answer, first=False)[: self.max_answer_tokens - 1]
    return ids + [self.eos_id]

  def entity_text(self, kind: str, index: int) -> str:
    if kind == P.USER:
      return f"{USER_PREFIX}{index}"
    return self.item_index.identifier(index)

  def entity_row(self, kind: str, index: int) -> int:
    return index if kind == P.USER else self.num_users + index

  def target_row(self, prompt: P.Prompt) -> int:
    """CF row of the item a prompt asks for (-1 for text tasks)."""
    if prompt.target_item < 0:
      return -1
    return self.entity_row(P.ITEM, prompt.target_item)

  def candidate_label(self, position: int, item: int) -> str:
    """How a re-ranking prompt names its ``position``-th candidate."""
    if self.coding.candidate_labels == "letters":
      if position >= len(LETTERS):
        raise ValueError(
          f"letter labels name at most {len(LETTERS)} candidates"
        )
      return LETTERS[position]
    return self.item_index.identifier(item)

  def encode(self, prompt: P.Prompt, with_answer: bool) -> Encoded:
    """Tokenises a prompt (and its answer when ``with_answer``)."""
    coding = self.coding
    tokens: list[int] = []
    entity: list[int] = []
    query: list[int] = []

    def add(ids, ent, qs):
      tokens.extend(ids)
      entity.extend([ent] * len(ids) if isinstance(ent, int) else ent)
      query.extend(qs)

    if coding.soft_prompt:
      add(
        [self.pad_id] * coding.soft_prompt,
        SOFT_PROMPT,
        range(coding.soft_prompt),
      )
    pending = ""  # text is tokenised in runs, as the LLM would read it
    listed = 0  # candidates so far
    for kind, value in (*prompt.segments, ("text", PROMPT_SUFFIX)):
      if kind == "text":
        pending += str(value)
        continue
      if kind == P.CANDIDATE:
        pending += self.candidate_label(listed, int(value))
        listed += 1
        # Text-only prompts have no soft tokens to tell lettered
        # candidates apart: they get the identifier too.
        if coding.candidate_labels == "letters" and not coding.soft_tokens:
          pending += " " + self.entity_text(kind, int(value))
      elif coding.ids_as_text:
        pending += self.entity_text(kind, int(value))
      first, count = coding.tokens_of(kind)
      if count:
        if pending:
          ids = self._text(pending, first=not tokens)
          add(ids, WORD, [0] * len(ids))
          pending = ""
        add(
          [self.pad_id] * count,
          self.entity_row(kind, int(value)),
          range(first, first + count),
        )
    ids = self._text(pending, first=not tokens)
    add(ids, WORD, [0] * len(ids))
    answer_start = len(tokens)
    if prompt.candidates:
      return self._pack_candidates(prompt, tokens, entity, query)
    if with_answer:
      if prompt.answer is None:
        raise ValueError(f"{prompt.task} prompt has no answer to train on")
      ids = self.answer_tokens(prompt.answer)
      add(ids, WORD, [0] * len(ids))
    return Encoded(
      tokens=np.asarray(tokens, np.int32),
      slot_entity=np.asarray(entity, np.int32),
      slot_query=np.asarray(query, np.int32),
      answer_start=answer_start,
      target_item=prompt.target_item,
      user=prompt.user,
      task=prompt.task,
      target_row=self.target_row(prompt),
    )

  def candidate_answers(self, prompt: P.Prompt) -> list[list[int]]:
    """Answer tokens naming each candidate of ``prompt``.

    Identifiers are answers as in generation (EOS last). A letter is the
    whole answer (no EOS, as in LlamaRec): every candidate is then scored
    by one logit at the prompt's last position, with nothing to feed.
    """
    if self.coding.candidate_labels == "letters":
      return [
        self._text(" " + self.candidate_label(n, 0), first=False)
        for n in range(len(prompt.candidates))
      ]
    return [
      self.answer_tokens(self.candidate_label(n, int(item)))
      for n, item in enumerate(prompt.candidates)
    ]

  def _pack_candidates(self, prompt, tokens, entity, query) -> Encoded:
    """The prompt followed by every candidate's answer, packed.

    Answer tokens all candidates share (e.g. ``" item", "_"``) are fed once
    after the prompt; each candidate's remaining tokens but the last form
    its own segment, positioned right after the shared part.
    """
    answers = self.candidate_answers(prompt)
    if len({tuple(a) for a in answers}) < len(answers):
      raise ValueError(f"{prompt.task}: two candidates share one answer")
    common = 0  # leading tokens every answer shares
    shortest = min(len(a) for a in answers)
    while common < shortest - 1 and all(
      a[common] == answers[0][common] for a in answers
    ):
      common += 1
    prompt_end = len(tokens)
    shared = list(tokens) + answers[0][:common]
    n_shared = len(shared)
    tokens = shared
    entity = list(entity) + [WORD] * common
    query = list(query) + [0] * common
    segment = [0] * n_shared
    positions = list(range(n_shared))
    logits_at, cand_tokens = [], []
    for c, answer in enumerate(answers):
      at = [prompt_end - 1 + j for j in range(common)] + [n_shared - 1]
      fed = answer[common:-1]
      start = len(tokens)
      tokens += fed
      entity += [WORD] * len(fed)
      query += [0] * len(fed)
      segment += [c + 1] * len(fed)
      positions += [n_shared + j for j in range(len(fed))]
      at += [start + j for j in range(len(fed))]
      logits_at.append(np.asarray(at, np.int32))
      cand_tokens.append(np.asarray(answer, np.int32))
    candidates = np.asarray(prompt.candidates, np.int32)
    hits = np.flatnonzero(candidates == prompt.target_item)
    return Encoded(
      tokens=np.asarray(tokens, np.int32),
      slot_entity=np.asarray(entity, np.int32),
      slot_query=np.asarray(query, np.int32),
      answer_start=prompt_end,
      target_item=prompt.target_item,
      user=prompt.user,
      task=prompt.task,
      target_row=self.target_row(prompt),
      segment=np.asarray(segment, np.int32),
      positions=np.asarray(positions, np.int32),
      candidates=candidates,
      label=int(hits[0]) if len(hits) else -1,
      cand_logits_at=tuple(logits_at),
      cand_tokens=tuple(cand_tokens),
    )


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
    tasks: task names (``prompts.TASKS``).
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
    elif task == P.PROFILE:
      for u in pick(split.num_users):
        text = P.profile_text(catalog, split.train_sequences[u])
        if text:
          made.append(P.render(tpl(), user=int(u), answer=text))
    else:
      raise ValueError(f"unknown stage-2 task {task!r}; known: {P.TASKS}")
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


def encode_fitting(
  encoder: PromptEncoder, prompt: P.Prompt, max_length: int, with_answer: bool
) -> Encoded | None:
  """Encodes, dropping the oldest history items until it fits ``max_length``.

  Returns None when even the shortest form does not fit.
  """
  while True:
    enc = encoder.encode(prompt, with_answer)
    if len(enc.tokens) <= max_length:
      return enc
    items = [i for i, (k, _) in enumerate(prompt.segments) if k == P.HISTORY]
    if len(items) < 2:
      return None
    # Drop the oldest history item and the separator that follows it.
    first = items[0]
    segments = prompt.segments[:first] + prompt.segments[first + 2 :]
    prompt = dataclasses.replace(prompt, segments=segments)


def bucket_of(length: int, buckets) -> int:
  """Index of the shortest bucket holding ``length`` tokens."""
  for b, size in enumerate(buckets):
    if length <= size:
      return b
  raise ValueError(f"{length} tokens exceed the largest bucket {buckets[-1]}")


def collate(
  examples: list[Encoded],
  length: int,
  num_targets: int,
  num_entities: int,
  pad_id: int,
  with_answer: bool = True,
  retrieval_targets: bool = False,
  num_users: int | None = None,
  num_candidates: int = 1,
  answer_length: int = 1,
) -> dict[str, np.ndarray]:
  """Pads examples into one fixed-shape batch.

  Args:
    examples: B encoded examples, each at most ``length`` tokens.
    length: L, the bucket length.
    num_targets: P, answer positions per row.
    num_entities: E, rows of ``entities`` (>= distinct entities, >= 1).
    pad_id: token id of padding.
    with_answer: the examples carry answers (training) or not (decoding).
    retrieval_targets: also encode each example's target item (the
      retrieval head's positive) and give ``target_entity`` and
      ``entity_is_candidate``.
    num_users: U (CF rows from U on are items); needed with
      ``retrieval_targets``.
    num_candidates: N, candidates per row (re-ranking; >= 1).
    answer_length: M, answer tokens per candidate (re-ranking; >= 1).

  Returns:
    tokens int32[B, L], input_mask bool[B, L], positions int32[B, L],
    segment_ids int32[B, L], slot_entity int32[B, L] (local index into
    ``entities``, WORD or SOFT_PROMPT), slot_query int32[B, L], entities
    int32[E] (CF rows, each distinct one once, padded by repeating the
    first); cand_logits_at int32[B, N, M] (positions whose logits predict
    each candidate's answer tokens), cand_tokens int32[B, N, M], cand_mask
    bool[B, N, M] and cand_label int32[B] (the target's candidate, -1 for
    none); when ``with_answer``: target_positions int32[B, P] (positions
    whose logits predict the answer), target_tokens int32[B, P],
    target_mask bool[B, P]; when ``retrieval_targets``: target_entity
    int32[B] (local index of the target item, -1 for text tasks) and
    entity_is_candidate bool[E] (distinct real item rows).
  """
  b = len(examples)
  if retrieval_targets and num_users is None:
    raise ValueError("collate: retrieval_targets needs num_users")
  extra = [
    np.asarray([e.target_row for e in examples if e.target_row >= 0], np.int32)
  ]
  rows = np.unique(
    np.concatenate(
      [e.slot_entity[e.slot_entity >= 0] for e in examples]
      + [np.zeros(0, np.int32)]
      + (extra if retrieval_targets else [])
    )
  ).astype(np.int32)
  if len(rows) > num_entities:
    raise ValueError(
      f"{len(rows)} distinct entities > num_entities {num_entities}"
    )
  entities = np.full(num_entities, rows[0] if len(rows) else 0, np.int32)
  entities[: len(rows)] = rows
  out = {
    "tokens": np.full((b, length), pad_id, np.int32),
    "input_mask": np.zeros((b, length), bool),
    "positions": np.zeros((b, length), np.int32),
    "segment_ids": np.zeros((b, length), np.int32),
    "slot_entity": np.full((b, length), WORD, np.int32),
    "slot_query": np.zeros((b, length), np.int32),
    "entities": entities,
    "cand_logits_at": np.zeros((b, num_candidates, answer_length), np.int32),
    "cand_tokens": np.full(
      (b, num_candidates, answer_length), pad_id, np.int32
    ),
    "cand_mask": np.zeros((b, num_candidates, answer_length), bool),
    "cand_label": np.full(b, -1, np.int32),
  }
  if retrieval_targets:
    out["target_entity"] = np.array(
      [
        np.searchsorted(rows, e.target_row) if e.target_row >= 0 else -1
        for e in examples
      ],
      np.int32,
    )
    # Padding repeats of a row and user rows are no candidates.
    candidate = np.zeros(num_entities, bool)
    candidate[: len(rows)] = rows >= num_users
    out["entity_is_candidate"] = candidate
  if with_answer:
    out["target_positions"] = np.zeros((b, num_targets), np.int32)
    out["target_tokens"] = np.full((b, num_targets), pad_id, np.int32)
    out["target_mask"] = np.zeros((b, num_targets), bool)
  for r, e in enumerate(examples):
    n = len(e.tokens)
    if n > length:
      raise ValueError(f"example of {n} tokens does not fit length {length}")
    out["tokens"][r, :n] = e.tokens
    out["input_mask"][r, :n] = True
    out["positions"][r, :n] = np.arange(n) if e.positions is None else (
      e.positions
    )  # fmt: skip
    if e.segment is not None:
      out["segment_ids"][r, :n] = e.segment
    local = np.where(
      e.slot_entity >= 0, np.searchsorted(rows, e.slot_entity), e.slot_entity
    )
    out["slot_entity"][r, :n] = local
    out["slot_query"][r, :n] = e.slot_query
    if len(e.cand_tokens) > num_candidates or e.answer_length > answer_length:
      raise ValueError(
        f"{len(e.cand_tokens)} candidates of up to {e.answer_length} answer "
        f"tokens do not fit {num_candidates} x {answer_length}"
      )
    for c, (at, tok) in enumerate(zip(e.cand_logits_at, e.cand_tokens)):
      out["cand_logits_at"][r, c, : len(at)] = at
      out["cand_tokens"][r, c, : len(tok)] = tok
      out["cand_mask"][r, c, : len(tok)] = True
    out["cand_label"][r] = e.label
    if with_answer:
      # Re-ranking rows have no answer of their own; their first target
      # position still marks the prompt's last token (the retrieval head
      # reads its hidden state there).
      m = min(n - e.answer_start, num_targets) if not e.is_rerank else 0
      out["target_positions"][r, :m] = e.answer_start - 1 + np.arange(m)
      out["target_positions"][r, m:] = e.answer_start - 1 if m == 0 else 0
      out["target_tokens"][r, :m] = e.tokens[
        e.answer_start : e.answer_start + m
      ]
      out["target_mask"][r, :m] = True
  return out


class BucketBatches:
  """Endless, deterministic, resumable training batches from length buckets.

  Each epoch shuffles every bucket, cuts it into batches (the last one of a
  bucket topped up with random members of that bucket) and shuffles the
  batch order; the state is (epoch, batch within epoch). Re-ranking
  examples and the other tasks' examples fill separate batches, so each
  kind keeps its own fixed shapes (one compile per bucket and kind).

  Args:
    examples: encoded training examples (with answers).
    batch_size: B.
    buckets: ascending bucket lengths.
    num_targets: P answer positions per row.
    pad_id: padding token id.
    seed: shuffling seed.
    num_users: U; when given, batches carry the retrieval head's targets
      (``collate(..., retrieval_targets=True)``).
  """

  def __init__(
    self,
    examples,
    batch_size,
    buckets,
    num_targets,
    pad_id,
    seed=0,
    num_users: int | None = None,
  ):
    if not examples:
      raise ValueError("no stage-2 training examples")
    self.examples = examples
    self.batch_size = int(batch_size)
    self.buckets = tuple(int(b) for b in buckets)
    self.num_targets = int(num_targets)
    self.pad_id = int(pad_id)
    self.seed = int(seed)
    self.num_users = num_users
    # The target item may be one more distinct entity per example.
    self.num_entities = self.batch_size * (
      max(1, max(e.num_entities for e in examples)) + (num_users is not None)
    )
    rerank = [e for e in examples if e.is_rerank]
    self.num_candidates = max([1] + [len(e.cand_tokens) for e in rerank])
    self.answer_length = max([1] + [e.answer_length for e in rerank])
    # Group key: (bucket index, is re-ranking).
    self.groups = sorted(
      {(bucket_of(len(e.tokens), self.buckets), e.is_rerank) for e in examples}
    )
    self.members: list[list[int]] = [[] for _ in self.groups]
    for n, e in enumerate(examples):
      key = (bucket_of(len(e.tokens), self.buckets), e.is_rerank)
      self.members[self.groups.index(key)].append(n)
    self.epoch, self.position = 0, 0
    self._plan = self._epoch_plan(0)

  def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng([self.seed, epoch])
    plan = []
    for g, members in enumerate(self.members):
      order = rng.permutation(np.asarray(members))
      extra = -len(order) % self.batch_size
      order = np.concatenate([order, rng.choice(order, extra)])
      plan += [(g, chunk) for chunk in order.reshape(-1, self.batch_size)]
    return [plan[i] for i in rng.permutation(len(plan))]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position >= len(self._plan):
      self.epoch, self.position = self.epoch + 1, 0
      self._plan = self._epoch_plan(self.epoch)
    group, rows = self._plan[self.position]
    self.position += 1
    bucket, rerank = self.groups[group]
    return collate(
      [self.examples[i] for i in rows],
      self.buckets[bucket],
      1 if rerank else self.num_targets,
      self.num_entities,
      self.pad_id,
      retrieval_targets=self.num_users is not None,
      num_users=self.num_users,
      num_candidates=self.num_candidates if rerank else 1,
      answer_length=self.answer_length if rerank else 1,
    )

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "position": self.position}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
    self._plan = self._epoch_plan(self.epoch)
