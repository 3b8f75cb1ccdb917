"""Stage-2 results as two readable tables and a plot.

``stage2.run`` returns one flat dict of metrics per evaluation key; this
turns it into an item-ranking table (one row per task, split and template
set: HR/NDCG filtered and unfiltered, and the retrieval head's full ranking
when trained) and a text table (semantic consistency, title accuracy), as
printed by the launcher and written to ``stage2/results.md`` and
``stage2/results.png``.
"""

from __future__ import annotations

import pathlib

from ilm_jax.eval.report import bar_plot, markdown_table

RANKING = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
TABLE_FILE = "results.md"
PLOT_FILE = "results.png"


def ranking_rows(results: dict) -> dict[str, dict[str, float]]:
  """``"{task}/{split}/{templates}"`` (and ``retrieval/...``) -> metrics.

  Columns: filtered HR/NDCG, then unfiltered HR@10 / NDCG@10, then the
  share of beams that spelled an item and the users evaluated.
  """
  rows = {}
  for key, metrics in results.get("eval", {}).items():
    if "filtered/HR@10" not in metrics:
      continue
    row = {m: metrics[f"filtered/{m}"] for m in RANKING}
    for m in ("HR@10", "NDCG@10"):
      row[f"unfiltered {m}"] = metrics[f"unfiltered/{m}"]
    for m in ("valid_rate", "users"):
      if m in metrics:
        row[m] = metrics[m]
    rows[key] = row
  return rows


def text_rows(results: dict) -> dict[str, dict[str, float]]:
  """``"{task}/{templates}"`` -> SC (mean, std), title accuracy, prompts."""
  rows = {}
  for key, metrics in results.get("eval", {}).items():
    if "SC" not in metrics:
      continue
    rows[key] = {
      m: metrics[m]
      for m in ("SC", "SC_std", "title_accuracy", "prompts")
      if m in metrics
    }
  return rows


def tables(results: dict, name: str) -> str:
  """Both markdown tables of one stage-2 result (``name`` titles them)."""
  variant = results.get("variant", "ilm")
  budget = (
    f"{results.get('steps', '?')} steps, "
    f"{results.get('train_examples', '?')} training prompts"
  )
  out = []
  ranking = ranking_rows(results)
  if ranking:
    out.append(
      markdown_table(
        ranking,
        f"{name}: stage 2 ({variant}, {budget}), item ranking by "
        "constrained beam search (filtered unless said)",
      )
    )
  text = text_rows(results)
  if text:
    out.append(
      markdown_table(text, f"{name}: stage 2 ({variant}), generated text")
    )
  return "\n".join(out)


def write(results: dict, out_dir: str | pathlib.Path, name: str) -> str:
  """Writes ``results.md`` and ``results.png`` in ``out_dir``; returns the
  markdown."""
  out_dir = pathlib.Path(out_dir)
  text = tables(results, name)
  (out_dir / TABLE_FILE).write_text(text)
  plotted = {
    key: {"HR@10": row["HR@10"], "NDCG@10": row["NDCG@10"]}
    for key, row in ranking_rows(results).items()
  }
  for key, row in text_rows(results).items():
    plotted[key] = {"SC": row["SC"]}
  if plotted:
    bar_plot(plotted, out_dir / PLOT_FILE, f"{name}: stage 2")
  return text
