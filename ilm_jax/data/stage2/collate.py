"""Stage-2 batches of fixed shape from encoded examples.

Each example goes to the shortest length bucket it fits, so jit compiles
once per bucket. The distinct entities of a batch are listed once
(``entities``) and positions refer to them by local index, so the item
encoder runs once per distinct entity.
"""

from __future__ import annotations

import numpy as np

from ilm_jax.data.stage2.encoding import Encoded
from ilm_jax.models.slots import WORD


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
  entity_rows: np.ndarray | None = None,
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
    entity_rows: int32[R] sorted distinct CF rows that ``entities`` lists
      (default: those of ``examples``). A host collating its share of a
      global batch passes the whole batch's, so every host's rows index one
      entity table.

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
  rows = entity_rows
  if rows is None:
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
    out["positions"][r, :n] = (
      np.arange(n) if e.positions is None else (e.positions)
    )
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
