"""Result charts and training curves (eval/charts.py, pipeline/figures.py)."""

import json

import matplotlib.pyplot as plt
from matplotlib.container import BarContainer, ErrorbarContainer

from ilm_jax.eval import charts
from ilm_jax.eval.report import format_value, markdown_table
from ilm_jax.pipeline import figures


def test_panel_draws_bars_with_errors_and_labels_and_baselines_as_lines():
  panel = charts.Panel(
    "ranking",
    ("HR@10", "NDCG@10"),
    bars={
      "ILM": {"HR@10": 0.07, "HR@10_se": 0.01, "NDCG@10": 0.03},
      "no such metrics": {"SC": 0.2},  # nothing to draw: no legend entry
    },
    references={"popularity": {"HR@10": 0.04, "NDCG@10": 0.02}},
  )
  fig, ax = plt.subplots()
  charts.draw_panel(ax, panel)
  labels = ax.get_legend_handles_labels()[1]
  assert sorted(labels) == ["ILM", "popularity"]
  bars = [c for c in ax.containers if isinstance(c, BarContainer)]
  assert [len(b) for b in bars] == [2]  # one model, a bar per metric
  assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
  texts = {t.get_text() for t in ax.texts}
  assert {".070", ".030", ".040", ".020"} <= texts  # values on bars, lines
  assert len(ax.collections) >= 2  # the two dashed reference lines
  plt.close(fig)


def test_curves_and_redrawn_charts_land_in_the_workdir(tmp_path):
  history = {
    "train": [{"step": s, "loss": 3.0 / s, "grad_norm": 1.0} for s in (1, 2)],
    "eval": [{"step": 2, "recall": 0.5}],
    "final": {},
  }
  (tmp_path / "stage1").mkdir()
  (tmp_path / "stage1" / "metrics.json").write_text(json.dumps(history))
  (tmp_path / "cf").mkdir()  # no training history: no curves
  (tmp_path / "cf" / "metrics.json").write_text(json.dumps({"users": 5}))
  written = figures.write(tmp_path, "toy")
  assert written == [tmp_path / "stage1" / figures.CURVES_FILE]
  assert written[0].stat().st_size > 0
  assert not charts.curves_chart({"train": []}, tmp_path / "x.png", "empty")


def test_counts_print_as_integers():
  assert format_value("users", 40.0) == "40"
  assert format_value("filtered/users", 40.0) == "40"
  assert format_value("HR@10", 0.5, 0.1) == "0.5000 ± 0.1000"
  table = markdown_table({"ilm": {"HR@10": 0.1, "users": 610.0}})
  assert "| 610 |" in table and "610.0000" not in table


def test_generated_samples_go_to_tensorboard_as_text(tmp_path):
  results = {
    "steps": 3,
    "evaluations": {
      "text:description:-:unseen": {
        "kind": "text",
        "task": "description",
        "split": "-",
        "templates": "unseen",
        "metrics": {"SC": 0.1},
        "examples": [{"generated": "A film", "reference": "Alien (1979)"}],
      }
    },
  }
  assert figures.log_texts(tmp_path, results) == 1
  events = list((tmp_path / "tensorboard").iterdir())
  assert events and b"Alien (1979)" in events[0].read_bytes()
