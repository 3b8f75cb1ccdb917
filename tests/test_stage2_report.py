"""Stage-2 report: evaluation entries read into ranking and text tables."""

import math

import pytest

from ilm_jax.pipeline import stage2_comparison as C
from ilm_jax.pipeline import stage2_report as R


def _entry(kind, task, split, templates, metrics, **more):
  """A result entry as ``stage2.run`` writes it."""
  fields = {"kind": kind, "task": task, "split": split, "templates": templates}
  return {**fields, "metrics": metrics, **more}


def _evaluations(*entries):
  """{name: entry} of ``entries`` (the names are never parsed)."""
  return {
    ":".join(e[f] for f in ("kind", "task", "split", "templates")): e
    for e in entries
  }


RESULTS = {
  "variant": "mlp",
  "steps": 3,
  "train_examples": 40,
  "evaluations": _evaluations(
    _entry(
      "generate",
      "sequential",
      "test",
      "unseen",
      {
        **{
          f"{mode}/{m}": 0.5 if mode == "filtered" else 0.25
          for mode in ("filtered", "unfiltered")
          for m in R.RANKING
        },
        **{
          f"{mode}/{m}_se": 0.05 if mode == "filtered" else 0.02
          for mode in ("filtered", "unfiltered")
          for m in R.RANKING
        },
        "filtered/users": 4,
        "unfiltered/users": 4,
        "valid_rate": 1.0,
        "users": 4,
        "seconds": 9.0,
      },
      retrieval={
        **{
          f"{mode}/{m}": 0.75
          for mode in ("filtered", "unfiltered")
          for m in R.RANKING
        },
        "filtered/users": 4,
      },
    ),
    _entry(
      "text",
      "profile",
      "-",
      "unseen",
      {"SC": 0.4, "SC_std": 0.1, "prompts": 4, "seconds": 2},
      examples=[{"generated": "a", "reference": "b"}],
    ),
    _entry(
      "text",
      "description",
      "-",
      "unseen",
      {
        "SC": 0.5,
        "SC_std": 0.2,
        "SC_se": 0.01,
        "title_accuracy": 0.25,
        "prompts": 4,
      },
    ),
  ),
}


def test_rows_split_ranking_from_text_and_keep_filtered_first():
  ranking = R.ranking_rows(RESULTS)
  assert list(ranking) == [
    "sequential/test/unseen",
    "retrieval/sequential/test/unseen",
  ]
  row = ranking["sequential/test/unseen"]
  assert row["HR@10"] == 0.5 and row["unfiltered HR@10"] == 0.25
  assert row["HR@10_se"] == 0.05 and row["NDCG@5_se"] == 0.05
  assert row["unfiltered NDCG@10_se"] == 0.02
  assert "seconds" not in row and row["users"] == 4
  assert "unfiltered HR@5" not in row and "unfiltered HR@5_se" not in row
  retrieval = ranking["retrieval/sequential/test/unseen"]
  assert retrieval["users"] == 4  # from "filtered/users"
  assert not any(k.endswith("_se") for k in retrieval)
  text = R.text_rows(RESULTS)
  # SE of SC from its ddof=0 std: 0.1 * sqrt(4 / 3) / sqrt(4).
  assert text["profile/unseen"] == {
    "SC": 0.4,
    "SC_se": pytest.approx(0.1 / math.sqrt(3)),
    "SC_std": 0.1,
    "prompts": 4,
  }
  # An SE the results hold wins; the title accuracy's is binomial.
  desc = text["description/unseen"]
  assert desc["SC_se"] == 0.01
  assert desc["title_accuracy_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 3))


def test_write_gives_tables_and_plot(tmp_path):
  text = R.write(RESULTS, tmp_path, "toy")
  assert (tmp_path / R.TABLE_FILE).read_text() == text
  assert "| retrieval/sequential/test/unseen | 0.7500 |" in text
  assert (
    "| sequential/test/unseen | 0.5000 ± 0.0500 | 0.5000 ± 0.0500 | "
    "0.5000 ± 0.0500 | 0.5000 ± 0.0500 | 0.2500 ± 0.0200 | "
    "0.2500 ± 0.0200 | 1.0000 | 4 |"
  ) in text
  assert "| profile/unseen | 0.4000 ± 0.0577 | 0.1000 | 4 | - |" in text
  assert (
    "| description/unseen | 0.5000 ± 0.0100 | 0.2000 | 4 | 0.2500 ± 0.2500 |"
  ) in text
  assert "_se" not in text
  assert "mlp, 3 steps" in text
  # Rows come from the entries' fields: the keys' spelling does not matter.
  renamed = dict(enumerate(RESULTS["evaluations"].values()))
  assert R.tables({**RESULTS, "evaluations": renamed}, "toy") == text
  assert (tmp_path / R.PLOT_FILE).stat().st_size > 0


def test_comparison_summary_row_carries_standard_errors():
  results = {
    "evaluations": _evaluations(
      _entry(
        "generate",
        "sequential",
        "test",
        "unseen",
        {
          "filtered/HR@10": 0.5,
          "filtered/HR@10_se": 0.05,
          "unfiltered/HR@10": 0.25,
          "unfiltered/HR@10_se": 0.02,
        },
        retrieval={"filtered/NDCG@10": 0.3, "filtered/NDCG@10_se": 0.03},
      ),
      _entry(
        "text",
        "description",
        "-",
        "unseen",
        {"SC": 0.5, "SC_std": 0.2, "title_accuracy": 0.25, "prompts": 4},
      ),
    ),
  }
  assert C.summary_row(results, "test", "unseen") == {
    "HR@10": 0.5,
    "HR@10_se": 0.05,
    "retrieval NDCG@10": 0.3,
    "retrieval NDCG@10_se": 0.03,
    "SC description": 0.5,
    "SC description_se": pytest.approx(0.2 / math.sqrt(3)),
    "title accuracy": 0.25,
    "title accuracy_se": pytest.approx(0.25),
  }


def _rerank_result(hr10):
  from ilm_jax.eval import metrics as M

  def metrics(v):
    return {
      **{m: v for m in R.RANKING},
      **{m + M.SE_SUFFIX: 0.01 for m in R.RANKING},
      "users": 610,
    }

  return {
    "ilm": metrics(hr10),
    "retriever": metrics(0.07),
    "shuffled": metrics(0.05),
    "popularity": metrics(0.04),
    "vs_retriever": {
      m: {
        "diff": hr10 - 0.07,
        "se": 0.004,
        "verdict": M.verdict(hr10 - 0.07, 0.004),
      }
      for m in R.RANKING
    },
    "vs_shuffled": {
      m: {
        "diff": hr10 - 0.05,
        "se": 0.004,
        "verdict": M.verdict(hr10 - 0.05, 0.004),
      }
      for m in R.RANKING
    },
    "lists": {"examples": 610, "recall@20": 0.11, "rank_mean": 9.0},
    "order": "retriever",
    "labels": "letters",
    "num_candidates": 20,
    "retrieved_by": "als",
  }


def test_rerank_table_puts_the_ilm_beside_its_nulls_with_verdicts(tmp_path):
  results = {
    **RESULTS,
    "evaluations": {
      **RESULTS["evaluations"],
      **_evaluations(
        _entry("rerank", "rerank", "test", "unseen", _rerank_result(0.08))
      ),
    },
    "rerank_training": {"lists": {"examples": 6000, "recall@20": 0.13}},
  }
  rows = R.rerank_rows(results)
  assert list(rows) == [
    "rerank/test/unseen: ILM re-ranks",
    "rerank/test/unseen: retriever order (null)",
    "rerank/test/unseen: top N shuffled (null)",
    "rerank/test/unseen: popularity",
  ]
  ilm = rows["rerank/test/unseen: ILM re-ranks"]
  assert ilm["HR@10"] == 0.08 and ilm["HR@10_se"] == 0.01
  assert ilm["HR@10 vs retriever"] == "+0.0100 ± 0.0040 (above)"
  assert ilm["HR@10 vs shuffled"] == "+0.0300 ± 0.0040 (above)"
  lists = R.list_rows(results)
  assert list(lists) == [
    "training lists (inner ALS)",
    "evaluation lists (test, als)",
  ]
  text = R.write(results, tmp_path, "toy")
  assert "0.0800 ± 0.0100" in text and "top 20 of als" in text
  assert "training lists (inner ALS)" in text
  assert (tmp_path / R.RERANK_PLOT_FILE).stat().st_size > 0
  comparison = C.rerank_rows(
    {
      "ilm": results,
      "text": {
        "evaluations": _evaluations(
          _entry("rerank", "rerank", "test", "unseen", _rerank_result(0.06))
        )
      },
    },
    "test",
    "unseen",
  )
  assert list(comparison) == [
    "ilm (re-ranks)",
    "text (re-ranks)",
    "als order (null)",
    "top N shuffled (null)",
  ]
  assert comparison["text (re-ranks)"]["HR@10 vs retriever"].endswith("(below)")


def test_comparison_tables_each_retrievers_candidates_apart():
  """SASRec's candidates get their own rows, never mixed with ALS's."""
  sasrec = _rerank_result(0.12)
  sasrec["retrieved_by"] = "sasrec"
  results = {
    "ilm": {
      "evaluations": {
        "rerank:rerank:test:unseen": _entry(
          "rerank", "rerank", "test", "unseen", _rerank_result(0.08)
        ),
        "rerank:rerank:test:unseen:sasrec": _entry(
          "rerank", "rerank", "test", "unseen", sasrec, retriever="sasrec"
        ),
      }
    }
  }
  als_rows = C.rerank_rows(results, "test", "unseen")
  sasrec_rows = C.rerank_rows(results, "test", "unseen", retriever="sasrec")
  assert als_rows["ilm (re-ranks)"]["HR@10"] == 0.08
  assert "als order (null)" in als_rows
  assert sasrec_rows["ilm (re-ranks)"]["HR@10"] == 0.12
  assert "sasrec order (null)" in sasrec_rows
  assert (
    C.rerank_rows(results, "test", "unseen", retriever="retrieval_head") == {}
  )
