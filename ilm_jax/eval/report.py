"""Results tables and plots for the metrics JSON every stage writes."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # headless: plots are written to files
import matplotlib.pyplot as plt  # noqa: E402


def markdown_table(rows: dict[str, dict[str, float]], title: str = "") -> str:
  """A markdown table: one row per model, one column per metric.

  Args:
    rows: model name -> {metric name -> value}.
    title: optional heading line.
  """
  metrics = list(dict.fromkeys(m for r in rows.values() for m in r))
  lines = [f"### {title}", ""] if title else []
  lines.append("| model | " + " | ".join(metrics) + " |")
  lines.append("|---|" + "---:|" * len(metrics))
  for model, values in rows.items():
    cells = [f"{values[m]:.4f}" if m in values else "-" for m in metrics]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def bar_plot(
  rows: dict[str, dict[str, float]], path: str | pathlib.Path, title: str
) -> None:
  """Grouped bars: metrics on the x axis, one bar per model."""
  metrics = list(dict.fromkeys(m for r in rows.values() for m in r))
  width = 0.8 / max(1, len(rows))
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(metrics), 3.5))
  for n, (model, values) in enumerate(rows.items()):
    xs = [i + n * width for i in range(len(metrics))]
    ax.bar(xs, [values.get(m, 0.0) for m in metrics], width, label=model)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))])
  ax.set_xticklabels(metrics)
  ax.set_title(title)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
