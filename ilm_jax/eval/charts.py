"""Charts that explain results: metric panels with baselines, and curves.

``panels_chart`` draws one panel per kind of metric (ranking metrics never
share an axis with text metrics): grouped bars with ± 1 SE error bars and
their values written on them, and reference models (popularity, ALS) as
dashed horizontal lines across each metric's group instead of bars. Only
models that have a bar or a line get a legend entry.

``curves_chart`` draws a training run's history (``metrics.json`` of the
shared loop): one panel per logged quantity, training and evaluation
records on the same step axis.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

from ilm_jax import files
from ilm_jax.eval.metrics import SE_SUFFIX

matplotlib.use("Agg")  # headless: plots are written to files
import matplotlib.pyplot as plt  # noqa: E402

# Reference lines: colour per model, cycling past these.
_LINE_STYLES = ("tab:red", "tab:gray", "tab:purple", "tab:brown")
# Most panels in one row of a curves chart.
CURVE_COLUMNS = 4


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axis of a results chart.

  Attributes:
    title: the panel's title (what kind of metric it shows).
    metrics: the metrics on its x axis, in order.
    bars: model -> {metric: value, metric + "_se": SE}; a model without
      any of ``metrics`` gets no bar and no legend entry.
    references: model -> {metric: value}: dashed lines across the metric's
      group (baselines such as popularity and ALS).
  """

  title: str
  metrics: Sequence[str]
  bars: Mapping[str, Mapping[str, float]]
  references: Mapping[str, Mapping[str, float]] = dataclasses.field(
    default_factory=dict
  )


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def draw_panel(ax, panel: Panel) -> None:
  metrics = list(panel.metrics)
  bars = {
    model: values
    for model, values in panel.bars.items()
    if any(_finite(values.get(m)) for m in metrics)
  }
  width = 0.8 / max(1, len(bars))
  for n, (model, values) in enumerate(bars.items()):
    xs = [i - 0.4 + (n + 0.5) * width for i in range(len(metrics))]
    heights = [
      values.get(m) if _finite(values.get(m)) else 0.0 for m in metrics
    ]
    ses = [values.get(m + SE_SUFFIX) for m in metrics]
    yerr = [s if _finite(s) else 0.0 for s in ses]
    drawn = ax.bar(
      xs,
      heights,
      width,
      yerr=yerr if any(yerr) else None,
      capsize=3,
      label=model,
    )
    ax.bar_label(
      drawn,
      labels=[_value_label(h) for h in heights],
      fontsize="x-small",
      padding=2,
    )
  for n, (model, values) in enumerate(panel.references.items()):
    colour = _LINE_STYLES[n % len(_LINE_STYLES)]
    labelled = False
    for i, m in enumerate(metrics):
      if not _finite(values.get(m)):
        continue
      ax.hlines(
        values[m],
        i - 0.45,
        i + 0.45,
        colors=colour,
        linestyles="dashed",
        label=None if labelled else model,
      )
      ax.annotate(
        _value_label(values[m]),
        (i + 0.45, values[m]),
        fontsize="x-small",
        color=colour,
        va="bottom",
        ha="right",
      )
      labelled = True
  ax.set_xticks(range(len(metrics)))
  ax.set_xticklabels(metrics)
  ax.set_xlim(-0.6, len(metrics) - 0.4)
  ax.set_title(panel.title, fontsize="medium")
  ax.margins(y=0.15)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="x-small")


def _value_label(value: float) -> str:
  return f"{value:.3f}".lstrip("0") if 0 < value < 1 else f"{value:.3g}"


def panels_chart(
  panels: Sequence[Panel], path: str | pathlib.Path, title: str
) -> None:
  """Writes one figure of ``panels`` side by side (empty ones skipped)."""
  panels = [
    p
    for p in panels
    if p.metrics
    and (
      any(_finite(v.get(m)) for v in p.bars.values() for m in p.metrics)
      or p.references
    )
  ]
  if not panels:
    return
  widths = [max(2, len(p.metrics)) * (1 + 0.4 * len(p.bars)) for p in panels]
  fig, axes = plt.subplots(
    1,
    len(panels),
    figsize=(1.5 + sum(widths), 4.0),
    gridspec_kw={"width_ratios": widths},
    squeeze=False,
  )
  for ax, panel in zip(axes[0], panels):
    draw_panel(ax, panel)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)


def curves_chart(
  history: Mapping[str, list], path: str | pathlib.Path, title: str
) -> bool:
  """Writes the training curves of a loop's ``metrics.json`` history.

  Args:
    history: {"train": [{"step": s, name: value, ...}], "eval": [...]}.
    path: the image file.
    title: the figure title.

  Returns:
    Whether anything was drawn (False: no numeric records).
  """
  series: dict[str, dict[str, tuple[list, list]]] = {}
  for split in ("train", "eval"):
    for record in history.get(split, []):
      for name, value in record.items():
        if name == "step" or not _finite(value):
          continue
        steps, values = series.setdefault(name, {}).setdefault(split, ([], []))
        steps.append(record["step"])
        values.append(value)
  if not series:
    return False
  # Losses first, then the rest alphabetically: the panel a reader wants.
  names = sorted(series, key=lambda n: ("loss" not in n, n != "loss", n))
  columns = min(CURVE_COLUMNS, len(names))
  rows = -(-len(names) // columns)
  fig, axes = plt.subplots(
    rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False
  )
  for ax, name in zip(axes.flat, names):
    for split, (steps, values) in series[name].items():
      ax.plot(
        steps, values, marker="o" if len(steps) < 3 else None, label=split
      )
    ax.set_title(name, fontsize="small")
    ax.set_xlabel("step", fontsize="x-small")
    ax.tick_params(labelsize="x-small")
    if len(series[name]) > 1:
      ax.legend(fontsize="x-small")
  for ax in list(axes.flat)[len(names) :]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  return True


def _save(fig, path) -> None:
  # Through a temporary file and a rename: a kill never leaves half a plot.
  fmt = pathlib.Path(path).suffix.lstrip(".") or "png"
  with files.open_atomic(path, "wb") as f:
    fig.savefig(f, dpi=120, format=fmt)
  plt.close(fig)
