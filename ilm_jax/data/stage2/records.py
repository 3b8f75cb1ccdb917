"""Stage-2 training examples as record files, and back.

Each ``Encoded`` example becomes one record (``to_record`` /
``from_record``). The index sidecar holds what every host needs to plan
batches without reading the examples: per example its length, whether it is
a re-ranking example, its candidate count and longest candidate answer, its
distinct entity rows (ragged) and its target row.
"""

from __future__ import annotations

import numpy as np

from ilm_jax.data.records import write_records
from ilm_jax.data.stage2.encoding import Encoded

_ARRAYS = ("tokens", "slot_entity", "slot_query")
_OPTIONAL = ("segment", "positions", "candidates")
_SCALARS = ("answer_start", "target_item", "user", "target_row", "label")


def to_record(example: Encoded) -> dict:
  """The example as a dict of arrays, ints and a string (no None fields)."""
  record = {name: getattr(example, name) for name in _ARRAYS}
  record.update({name: int(getattr(example, name)) for name in _SCALARS})
  record["task"] = example.task
  for name in _OPTIONAL:
    if getattr(example, name) is not None:
      record[name] = getattr(example, name)
  record["cand_logits_at"] = list(example.cand_logits_at)
  record["cand_tokens"] = list(example.cand_tokens)
  return record


def from_record(record: dict) -> Encoded:
  """The ``Encoded`` example ``to_record`` wrote."""
  fields = {name: np.asarray(record[name], np.int32) for name in _ARRAYS}
  fields.update({name: int(record[name]) for name in _SCALARS})
  for name in _OPTIONAL:
    if name in record:
      fields[name] = np.asarray(record[name], np.int32)
  for name in ("cand_logits_at", "cand_tokens"):
    # msgpack keeps a list of arrays as a list; an empty one may come back
    # as an empty dict.
    fields[name] = tuple(np.asarray(a, np.int32) for a in record[name] or ())
  return Encoded(task=str(record["task"]), **fields)


def index_of(examples: list[Encoded]) -> dict[str, np.ndarray]:
  """Per-example planning arrays (see the module docstring).

  Returns:
    length int32[N], rerank bool[N], num_candidates int32[N],
    answer_length int32[N], target_row int32[N], entity_offsets int64[N + 1]
    and entity_rows int32[offsets[-1]] (example n's sorted distinct entity
    rows are ``entity_rows[offsets[n]:offsets[n + 1]]``).
  """
  rows = [np.unique(e.slot_entity[e.slot_entity >= 0]) for e in examples]
  return {
    "length": np.array([len(e.tokens) for e in examples], np.int32),
    "rerank": np.array([e.is_rerank for e in examples], bool),
    "num_candidates": np.array(
      [len(e.cand_tokens) for e in examples], np.int32
    ),
    "answer_length": np.array([e.answer_length for e in examples], np.int32),
    "target_row": np.array([e.target_row for e in examples], np.int32),
    "entity_offsets": np.cumsum([0] + [len(r) for r in rows]).astype(np.int64),
    "entity_rows": np.concatenate(rows + [np.zeros(0, np.int32)]).astype(
      np.int32
    ),
  }


def write_stage2_records(path, examples: list[Encoded]) -> bool:
  """Writes encoded training examples (reused when unchanged).

  Args:
    path: file stem (``records.write_records``).
    examples: the encoded training examples, with answers.

  Returns:
    True when written, False when identical records were already there.
  """
  return write_records(path, map(to_record, examples), index_of(examples))
