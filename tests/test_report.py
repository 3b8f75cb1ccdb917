"""Markdown tables and bar plots: "mean ± SE" cells, counts, error bars."""

import numpy as np

from ilm_jax.eval import report
from ilm_jax.eval.metrics import MISS, metrics_from_ranks

ROWS = {
  "als": {"HR@10": 0.0705, "HR@10_se": 0.0104, "users": 40.0, "steps": 3},
  "pop": {"HR@10": 0.05, "HR@10_se": 0.01, "users": 40, "valid_rate": 0.5},
}


def test_markdown_table_pairs_values_with_se():
  text = report.markdown_table(ROWS, "toy")
  lines = text.splitlines()
  assert lines[0] == "### toy"
  assert lines[2] == "| model | HR@10 | users | steps | valid_rate |"
  assert "_se" not in text
  assert lines[4] == "| als | 0.0705 ± 0.0104 | 40 | 3 | - |"
  assert lines[5] == "| pop | 0.0500 ± 0.0100 | 40 | - | 0.5000 |"


def test_markdown_table_counts_and_plain_values():
  rows = {
    "a": {
      "filtered/users": 12.0,
      "prompts": np.int64(7),
      "SC": 0.25,
      "train s": 3.0,
      "users": 2.5,  # not a whole number: kept as a float
    }
  }
  line = report.markdown_table(rows).splitlines()[2]
  assert line == "| a | 12 | 7 | 0.2500 | 3.0000 | 2.5000 |"


def test_markdown_table_of_metrics_from_ranks():
  m = metrics_from_ranks(np.array([0, 2, 6, MISS, 1, 12]), ks=(10,))
  text = report.markdown_table({"m": m})
  assert text.splitlines()[0] == "| model | HR@10 | NDCG@10 | users |"
  hr = f"{m['HR@10']:.4f} ± {m['HR@10_se']:.4f}"
  assert hr == "0.6667 ± 0.2108"
  assert text.splitlines()[2].startswith(f"| m | {hr} | ")
  assert text.splitlines()[2].endswith(" | 6 |")


def test_bar_plot_with_error_bars(tmp_path, monkeypatch):
  calls = []
  bar = report.plt.Axes.bar

  def spy(self, x, height, *args, **kwargs):
    calls.append((list(height), kwargs.get("yerr")))
    return bar(self, x, height, *args, **kwargs)

  monkeypatch.setattr(report.plt.Axes, "bar", spy)
  rows = {**ROWS, "no se": {"HR@10": 0.02, "valid_rate": 0.4}}
  path = tmp_path / "bars.png"
  report.bar_plot(rows, path, "toy")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Bars for HR@10 and valid_rate only: no "_se" bars, no counts.
  assert calls == [
    ([0.0705, 0.0], [0.0104, 0.0]),
    ([0.05, 0.5], [0.01, 0.0]),
    ([0.02, 0.4], None),
  ]
