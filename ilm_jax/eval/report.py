"""Results tables and plots for the metrics JSON every stage writes.

A metric ``M`` whose dict also holds ``M + SE_SUFFIX`` (its standard error,
see ``ilm_jax.eval.metrics``) is shown as "mean ± SE" in one table column
and as a bar with an error bar, never as a column or bar of its own.
"""

from __future__ import annotations

import math
import numbers
import pathlib
from collections.abc import Mapping

import matplotlib

from ilm_jax import files
from ilm_jax.eval.metrics import SE_SUFFIX, split_se

matplotlib.use("Agg")  # headless: plots are written to files
import matplotlib.pyplot as plt  # noqa: E402

# Keys (or last "/"- or " "-separated part of a key) holding counts.
COUNT_KEYS = frozenset({"users", "prompts", "steps", "examples"})


def is_count_key(key: str) -> bool:
  """Whether ``key`` names a count, e.g. "users" or "filtered/users"."""
  return key.rsplit("/", 1)[-1].rsplit(" ", 1)[-1] in COUNT_KEYS


def metric_columns(rows: Mapping[str, Mapping[str, object]]) -> list[str]:
  """Metric names of ``rows`` in first-seen order, without the SE keys of
  metrics some row has."""
  keys = list(dict.fromkeys(m for r in rows.values() for m in r))
  present = set(keys)
  return [
    m
    for m in keys
    if not (m.endswith(SE_SUFFIX) and m[: -len(SE_SUFFIX)] in present)
  ]


def format_value(key: str, value, se=None) -> str:
  """One table cell.

  Args:
    key: the metric name (counts such as "users" print as integers).
    value: the value, or None when the row lacks the metric.
    se: its standard error, or None.

  Returns:
    "-" for None; "40" for integers and whole-number counts; "0.0705" for
    other numbers, "0.0705 ± 0.0104" with a finite SE; str(value) otherwise.
  """
  if value is None:
    return "-"
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return str(value)
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if is_count_key(key) and float(value).is_integer():
    return str(int(value))
  text = f"{value:.4f}"
  if isinstance(se, numbers.Real) and math.isfinite(se):
    text += f" ± {se:.4f}"
  return text


def markdown_table(rows: dict[str, dict[str, float]], title: str = "") -> str:
  """A markdown table: one row per model, one column per metric.

  Args:
    rows: model name -> {metric name -> value}; a metric's standard error
      under ``metric + "_se"`` is printed in the metric's cell ("v ± se").
    title: optional heading line.

  Returns:
    The table as markdown text (newline-terminated).
  """
  metrics = metric_columns(rows)
  lines = [f"### {title}", ""] if title else []
  lines.append("| model | " + " | ".join(metrics) + " |")
  lines.append("|---|" + "---:|" * len(metrics))
  for model, values in rows.items():
    pairs = split_se(values)
    cells = [format_value(m, *pairs.get(m, (None, None))) for m in metrics]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def bar_plot(
  rows: dict[str, dict[str, float]], path: str | pathlib.Path, title: str
) -> None:
  """Grouped bars: metrics on the x axis, one bar per model.

  Args:
    rows: model name -> {metric name -> value}; ``metric + "_se"`` keys
      become error bars (± 1 SE) on their metric's bar; counts ("users",
      ...) are not plotted.
    path: the image file to write (e.g. a .png).
    title: the plot title.
  """
  metrics = [m for m in metric_columns(rows) if not is_count_key(m)]
  # A model with none of the metrics gets no bar, so no legend entry.
  rows = {
    model: values
    for model, values in rows.items()
    if any(isinstance(values.get(m), numbers.Real) for m in metrics)
  }
  width = 0.8 / max(1, len(rows))
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(metrics), 3.5))
  for n, (model, values) in enumerate(rows.items()):
    xs = [i + n * width for i in range(len(metrics))]
    ses = [values.get(m + SE_SUFFIX) for m in metrics]
    yerr = None
    if any(s is not None for s in ses):
      yerr = [0.0 if s is None else s for s in ses]
    heights = [values.get(m, 0.0) for m in metrics]
    bars = ax.bar(
      xs,
      heights,
      width,
      yerr=yerr,
      capsize=3 if yerr is not None else 0,
      label=model,
    )
    ax.bar_label(
      bars, labels=[f"{h:.3g}" for h in heights], fontsize="xx-small"
    )
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))])
  ax.set_xticklabels(metrics)
  ax.set_title(title)
  if rows:
    ax.legend(fontsize="small")
  fig.tight_layout()
  # Through a temporary file and a rename: a kill never leaves half a plot.
  fmt = pathlib.Path(path).suffix.lstrip(".") or "png"
  with files.open_atomic(path, "wb") as f:
    fig.savefig(f, dpi=120, format=fmt)
  plt.close(fig)
