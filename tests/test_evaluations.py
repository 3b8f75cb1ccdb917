"""Declared stage-2 evaluations: parsing, validation, result entries."""

import pytest

from ilm_jax import config_checks
from ilm_jax.eval import evaluations as E
from ilm_jax.eval.evaluations import Evaluation


def test_entries_parse_into_evaluations_named_by_their_canonical_entry():
  got = E.parse(
    (
      "generate:sequential:test:unseen",
      "text:description:-:seen",
      "text:profile:unseen",  # text evaluations may omit the split
      " rerank : rerank_conversational : valid : seen ",
    )
  )
  assert got == (
    Evaluation("generate", "sequential", "test", "unseen"),
    Evaluation("text", "description", "-", "seen"),
    Evaluation("text", "profile", "-", "unseen"),
    Evaluation("rerank", "rerank_conversational", "valid", "seen"),
  )
  assert [e.name for e in got] == [
    "generate:sequential:test:unseen",
    "text:description:-:seen",
    "text:profile:-:unseen",
    "rerank:rerank_conversational:valid:seen",
  ]
  assert [e.label for e in got] == [
    "sequential/test/unseen",
    "description/seen",
    "profile/unseen",
    "rerank_conversational/valid/seen",
  ]
  assert [e.seen for e in got] == [False, True, False, True]
  # One string is one entry; nothing declared evaluates nothing.
  assert E.parse("generate:straightforward:valid:seen") == (
    Evaluation("generate", "straightforward", "valid", "seen"),
  )
  assert E.parse(()) == ()


@pytest.mark.parametrize(
  "entry, message",
  [
    ("generate:sequential:test", r"expected 'kind:task:split:templates'"),
    ("generate:sequential:test:unseen:x", r"expected 'kind:task:split"),
    ("rerank:rerank:test:unseen:bm25", r"retriever 'bm25' not in \('als', "),
    ("score:sequential:test:unseen", r"kind 'score' not in \('generate', "),
    (
      "generate:description:test:unseen",
      r"task 'description' is not a 'generate' task; allowed: "
      r"\('sequential', 'straightforward', 'conversational'\)",
    ),
    ("text:sequential:-:seen", r"task 'sequential' is not a 'text' task"),
    ("rerank:sequential:test:seen", r"allowed: \('rerank', 'rerank_conv"),
    ("generate:sequential:train:seen", r"split 'train' not in \('valid', "),
    ("rerank:rerank:-:seen", r"split '-' not in \('valid', 'test'\)"),
    ("text:profile:test:seen", r"text evaluations use no split: write '-'"),
    (
      "generate:sequential:test:held-out",
      r"templates 'held-out' not in \('seen', 'unseen'\)",
    ),
  ],
)
def test_a_bad_entry_is_named_with_what_is_allowed(entry, message):
  with pytest.raises(ValueError, match=message) as error:
    E.parse(("generate:sequential:valid:seen", entry))
  assert f"stage2.evaluations entry {entry!r}" in str(error.value)


def test_an_evaluation_declared_twice_is_an_error():
  with pytest.raises(ValueError, match="'text:profile:unseen': declared tw"):
    E.parse(("text:profile:-:unseen", "text:profile:unseen"))
  with pytest.raises(ValueError, match="not a string"):
    E.parse((3,))


def test_result_entries_carry_their_fields_and_are_found_by_them():
  seq = Evaluation("generate", "sequential", "test", "unseen")
  desc = Evaluation("text", "description", "-", "unseen")
  entry = seq.entry(metrics={"filtered/HR@10": 0.5})
  assert entry == {
    "kind": "generate",
    "task": "sequential",
    "split": "test",
    "templates": "unseen",
    "retriever": "",
    "metrics": {"filtered/HR@10": 0.5},
  }
  assert Evaluation.of_entry(entry) == seq
  # Entries written before the retriever field existed still read.
  del entry["retriever"]
  assert Evaluation.of_entry(entry) == seq
  # Keys are opaque to readers: entries are matched on their fields.
  results = {"evaluations": {"a": entry, "b": desc.entry(metrics={})}}
  assert E.result_entries(results, "text") == [desc.entry(metrics={})]
  assert E.find_entry(results, "generate", "sequential", "test", "unseen") is (
    entry
  )
  assert E.find_entry(results, "generate", "sequential", "valid", "unseen") is (
    None
  )
  assert E.of_kind(E.parse(("text:profile:seen",)), "rerank") == ()


def test_config_check_rejects_a_bad_entry_before_anything_runs():
  config = {"stage2": {"evaluations": ("text:profile:-:seen", "generate:x")}}
  with pytest.raises(
    config_checks.ConfigError,
    match=r"config\.stage2\.evaluations entry 'generate:x': expected",
  ):
    config_checks.check(config)
  config_checks.check({"stage2": {"evaluations": ("text:profile:-:seen",)}})


def test_rerank_entries_may_name_their_retriever():
  als, sasrec = E.parse(
    ("rerank:rerank:test:unseen", "rerank:rerank:test:unseen:sasrec")
  )
  assert (als.retriever, sasrec.retriever) == ("", "sasrec")
  assert sasrec.name == "rerank:rerank:test:unseen:sasrec"
  assert sasrec.label == "rerank/test/unseen/sasrec"
  assert als.name == "rerank:rerank:test:unseen"  # unchanged
  results = {
    "evaluations": {e.name: e.entry(metrics={}) for e in (als, sasrec)}
  }
  found = E.find_entry(results, "rerank", "rerank", "test", "unseen", "sasrec")
  assert found["retriever"] == "sasrec"
  assert E.find_entry(results, "rerank", "rerank", "test", "unseen") == (
    als.entry(metrics={})
  )
