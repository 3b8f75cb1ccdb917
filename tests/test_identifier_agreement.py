"""Generated identifiers against the held-out item's, digit by digit."""

import numpy as np
import pytest

from ilm_jax.eval import identifier_agreement as A
from ilm_jax.pipeline import stage2_report as R

# Four codes: "1" leads them all, "10" three of them, "100" two.
CODES = np.array([1000, 1001, 1010, 1100])


def test_agreement_per_prefix_length_against_chance():
  # User 0: held-out 1000, first choice 1001 (three digits shared);
  # user 1: held-out 1100, first choice 1010 (only the leading "1").
  levels = A.prefix_agreement(np.array([1, 2]), np.array([0, 3]), CODES)
  # The first digit is every code's: uninformative, left out; so is the
  # whole code (HR@1).
  assert [lv["digits"] for lv in levels] == [2, 3]
  two, three = levels
  assert two["agreement"] == three["agreement"] == 0.5
  assert two["agreement_se"] == pytest.approx(0.5 / np.sqrt(2))
  # Chance: "10" covers 3 of 4 codes, "11" 1 of 4; "100" 2, "110" 1.
  assert two["chance"] == pytest.approx((3 / 4 + 1 / 4) / 2)
  assert three["chance"] == pytest.approx((2 / 4 + 1 / 4) / 2)
  assert "popularity_chance" not in two and "last_item" not in two


def test_references_weight_chance_by_popularity_and_copy_the_latest_item():
  popularity = np.array([1.0, 1.0, 0.0, 2.0])  # 1100 holds half the weight
  two, three = A.prefix_agreement(
    np.array([1, 2]),
    np.array([0, 3]),
    CODES,
    popularity,
    last_items=np.array([2, -1]),
  )
  # "10" weighs 2 of 4, "11" 2 of 4; "100" 2 of 4, "110" 2 of 4.
  assert two["popularity_chance"] == pytest.approx(0.5)
  assert three["popularity_chance"] == pytest.approx(0.5)
  # User 0's latest item 1010 shares "10" (not "100") with 1000; user 1 has
  # no history.
  assert (two["last_item"], three["last_item"]) == (0.5, 0.0)


def test_a_digit_every_code_shares_is_left_out_in_a_large_catalogue():
  # 1,349 codes starting with "1": shares summed over many items must still
  # count as the whole catalogue.
  codes = 1_000_000 + np.arange(1349) * 701
  levels = A.prefix_agreement(
    np.arange(5), np.arange(5) + 1, codes, popularity=np.arange(1349) + 1.0
  )
  assert levels[0]["digits"] == 2


def test_an_empty_beam_agrees_with_nothing():
  levels = A.prefix_agreement(np.array([-1]), np.array([0]), CODES)
  assert all(lv["agreement"] == 0.0 for lv in levels)
  assert A.prefix_agreement(np.zeros(0), np.zeros(0), CODES) == []
  with pytest.raises(ValueError, match="one shape"):
    A.prefix_agreement(np.array([0, 1]), np.array([0]), CODES)


def test_summary_counts_distinct_items_and_names_examples():
  names = [f"item_{c}" for c in CODES]
  ranked = np.array([[1, 2, -1], [1, 3, 0]])
  found = A.summary(
    ranked,
    np.array([0, 3]),
    [np.array([3, 2, 1]), np.array([0])],
    CODES,
    names,
    keep_examples=1,
    history_shown=2,
  )
  assert found["distinct_top1"] == 1 and found["distinct_listed"] == 4
  assert found["examples"] == [
    {
      "history": ["item_1010", "item_1001"],
      "target": "item_1000",
      "generated": ["item_1001", "item_1010"],
    }
  ]
  assert [lv["agreement"] for lv in found["prefix_agreement"]] == [0.5, 0.5]
  # The latest history items (1001, 1000) share 3 and all 4 digits.
  assert [lv["last_item"] for lv in found["prefix_agreement"]] == [0.5, 0.5]


def test_report_lists_agreement_beside_chance():
  levels = A.prefix_agreement(np.array([1, 2]), np.array([0, 3]), CODES)
  entry = {
    "kind": "generate",
    "task": "sequential",
    "split": "test",
    "templates": "unseen",
    "metrics": {},
    "identifiers": {
      "prefix_agreement": levels,
      "distinct_top1": 2,
      "distinct_listed": 3,
      "examples": [],
    },
  }
  rows = R.agreement_rows({"evaluations": {"g": entry}})
  row = rows["sequential/test/unseen, first 2 digits"]
  assert row["top-1 agrees"] == 0.5 and row["chance"] == 0.5
  assert row["distinct top-1"] == 2
  assert set(rows) == {
    "sequential/test/unseen, first 2 digits",
    "sequential/test/unseen, first 3 digits",
  }
