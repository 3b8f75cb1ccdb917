"""Stage-2 prompt encoding: token ids and soft-token slot maps.

An encoded prompt is a token sequence in which some positions are *soft*:
their input embedding is not the token's word embedding but soft token
``slot_query`` of entity ``slot_entity`` (a CF-table row: users first, then
items), or, for the text-only baseline, soft-prompt vector ``slot_query``.
The answer (an item identifier or text, then end-of-sequence) follows the
prompt; the loss is taken on the answer tokens only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import ItemIndex
from ilm_jax.models.slots import SOFT_PROMPT, WORD

PROMPT_SUFFIX = "\nAnswer:"
USER_PREFIX = "user_"
CANDIDATE_LABELS = ("identifiers", "letters")
# Soft tokens of the item an identifier-grounding prompt shows: the entity's
# full S ("entity") or the pooled ones a history or candidate item gets
# ("list"), so the identifier is tied to the tokens prompts list items by.
GROUNDING_TOKENS = ("entity", "list")
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
    grounding_tokens: the soft tokens of an item shown by them alone (the
      ``identify`` task): "entity" (all S) or "list" (the pooled tokens of
      a list member; all S when lists are not pooled).
  """

  soft_tokens: int
  ids_as_text: bool = True
  soft_prompt: int = 0
  list_tokens: int = 0
  candidate_labels: str = "identifiers"
  grounding_tokens: str = "entity"

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
    if self.grounding_tokens not in GROUNDING_TOKENS:
      raise ValueError(
        f"grounding_tokens {self.grounding_tokens!r} not in {GROUNDING_TOKENS}"
      )

  @property
  def pooled(self) -> bool:
    """List members get pooled tokens (fewer than an entity's S)."""
    return 0 < self.list_tokens < self.soft_tokens

  def tokens_of(self, kind: str) -> tuple[int, int]:
    """(first soft-token index, count) of an entity segment of ``kind``."""
    if kind == P.ITEM_NAMED:  # the identifier alone
      return 0, 0
    listed = kind in P.LIST_KINDS or (
      kind == P.ITEM_SOFT and self.grounding_tokens == "list"
    )
    if listed and self.pooled:
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

    bos = self.tokenizer.bos_id
    if self.tokenizer.add_bos and bos is not None:
      # BOS opens the sequence, before any soft token: models trained with
      # it (Gemma, Llama) expect it at position 0, soft prompt or not.
      add([bos], WORD, [0])
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
      elif kind == P.ITEM_NAMED or (coding.ids_as_text and kind != P.ITEM_SOFT):
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
