"""Stage-2 report: the flat results split into ranking and text tables."""

from ilm_jax.pipeline import stage2_report as R

RESULTS = {
  "variant": "mlp",
  "steps": 3,
  "train_examples": 40,
  "eval": {
    "sequential/test/unseen": {
      **{f"{mode}/{m}": 0.5 if mode == "filtered" else 0.25
         for mode in ("filtered", "unfiltered") for m in R.RANKING},
      "valid_rate": 1.0,
      "users": 4,
      "seconds": 9.0,
    },
    "retrieval/sequential/test/unseen": {
      **{f"{mode}/{m}": 0.75 for mode in ("filtered", "unfiltered")
         for m in R.RANKING},
    },
    "profile/unseen": {"SC": 0.4, "SC_std": 0.1, "prompts": 4, "seconds": 2},
  },
}  # fmt: skip


def test_rows_split_ranking_from_text_and_keep_filtered_first():
  ranking = R.ranking_rows(RESULTS)
  assert list(ranking) == [
    "sequential/test/unseen",
    "retrieval/sequential/test/unseen",
  ]
  row = ranking["sequential/test/unseen"]
  assert row["HR@10"] == 0.5 and row["unfiltered HR@10"] == 0.25
  assert "seconds" not in row and row["users"] == 4
  assert R.text_rows(RESULTS) == {
    "profile/unseen": {"SC": 0.4, "SC_std": 0.1, "prompts": 4}
  }


def test_write_gives_tables_and_plot(tmp_path):
  text = R.write(RESULTS, tmp_path, "toy")
  assert (tmp_path / R.TABLE_FILE).read_text() == text
  assert "| retrieval/sequential/test/unseen | 0.7500 |" in text
  assert "| profile/unseen | 0.4000 |" in text
  assert "mlp, 3 steps" in text
  assert (tmp_path / R.PLOT_FILE).stat().st_size > 0
