"""What a training run's state depends on, checked when it resumes.

A run resumed under another learning rate, batch size or CF table used to
continue silently and report the old model under the new ``config.json``.
A stage now describes what its state depends on (its config sections and
hashes of its inputs); the loop records that beside the checkpoints when a
run starts and compares it when one resumes. A difference stops the run,
naming every changed field, unless the loop config asks to start afresh.

Fields that only say how long or how visibly to train (``num_steps``, so a
finished run can be extended, and the logging / checkpoint cadence) are not
part of it.

The record written now is what the check compares against: a field the
stage records no longer (it stopped reading it) is not a difference, and a
field added to the config after a run was recorded is compared with the
value that reproduces how runs trained before it existed
(``ADDED_FIELDS``), so adding a field does not strand every older workdir.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from ilm_jax import files

FILE = "provenance.json"
# Loop fields that change neither the data seen so far nor the updates made.
BOOKKEEPING = (
  "num_steps",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "keep_checkpoints",
  "progress_bar",
)


# Flat provenance key -> the value under which runs recorded before the field
# existed trained. A new config field that changes training gets an entry
# here when it is added, with the value that keeps the old behaviour.
ADDED_FIELDS: dict[str, Any] = {
  "dataset.balanced_tree": False,
  "stage2.llm_activations": "auto",
  "stage2.trie_loss": False,
  "stage2.grounding_tokens": "entity",
  "stage2.rerank.train_retrievers": ["als"],
}
ABSENT = "<absent>"
# Sections a stage began recording after runs existed, whose values such runs
# cannot tell (stage 2's inner SASRec recipe): a record holding none of a
# section's fields is not compared on them, one holding any is.
INNER_SASREC = "inner_sasrec"
ADDED_SECTIONS = (INNER_SASREC,)


class ProvenanceError(RuntimeError):
  """A run would resume under inputs or settings it was not trained with."""


def file_digest(path: str | pathlib.Path) -> str:
  """SHA-256 of a file's bytes (an input's identity)."""
  return files.sha256(path)


def tree_digest(tree) -> str:
  """SHA-256 over a pytree's leaf paths, shapes, dtypes and bytes (the
  identity of a starting point, e.g. stage 1's Q-Former)."""
  import jax  # Only digesting parameters needs it.
  import numpy as np

  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def without_bookkeeping(loop_config: Mapping) -> dict:
  """A loop config's fields that shape training."""
  return {k: v for k, v in dict(loop_config).items() if k not in BOOKKEEPING}


def dataset_fields(dataset: Mapping, identifiers: bool = False) -> dict:
  """The dataset config's fields a stage's state depends on.

  ``balanced_tree`` shapes only collaborative identifiers, which only stage
  2 uses (``identifiers``); other stages leave it out.
  """
  out = dict(dataset)
  if not (identifiers and out.get("indexing") == "collaborative"):
    out.pop("balanced_tree", None)
  return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, Mapping):
    out = {}
    for key, child in value.items():
      out.update(_flat(child, f"{prefix}{key}."))
    return out
  if isinstance(value, list | tuple):
    value = list(value)
  return {prefix.rstrip("."): value}


def differences(saved: Mapping, current: Mapping) -> list[str]:
  """``"field: saved -> current"`` for every field of ``current`` whose
  saved value differs (a field the saved record lacks counts as its
  ``ADDED_FIELDS`` value, else as absent; an ``ADDED_SECTIONS`` section
  the saved record lacks entirely is not compared)."""
  a, b = _flat(saved), _flat(current)
  unrecorded = {
    section
    for section in ADDED_SECTIONS
    if not any(k.startswith(f"{section}.") for k in a)
  }
  out = []
  for key in sorted(b):
    if key.split(".", 1)[0] in unrecorded:
      continue
    before = a.get(key, ADDED_FIELDS.get(key, ABSENT))
    if before != b[key]:
      out.append(f"{key}: {before!r} -> {b[key]!r}")
  return out


def normalised(value: Any) -> Any:
  """``value`` as JSON would give it back (tuples as lists, plain types)."""
  return json.loads(json.dumps(value, default=str))


def check(workdir: pathlib.Path, current: Mapping) -> list[str]:
  """Differences between the recorded provenance and ``current`` (none when
  nothing was recorded, as for runs from before it existed)."""
  path = files.path(workdir) / FILE
  if not path.exists():
    return []
  return differences(files.read_json(path), normalised(current))


def record(workdir: pathlib.Path, current: Mapping) -> None:
  files.write_json(files.path(workdir) / FILE, normalised(current))
