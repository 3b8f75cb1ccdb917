"""Stage-2 results as two readable tables and a plot.

``stage2.run`` returns one entry per declared evaluation
(``results["evaluations"]``: kind, task, split, templates, metrics); this
turns the entries into a re-ranking table, an item-ranking table (one row
per ``generate`` evaluation: HR/NDCG filtered and unfiltered, and the
retrieval head's full ranking when trained) and a text table (semantic
consistency, title accuracy), reading the entries' fields, as printed by
the launcher and written to ``stage2/results.md`` and
``stage2/results.png``. Rows are named ``task/split/templates``
(``Evaluation.label``).
"""

from __future__ import annotations

import math
import pathlib

from ilm_jax import files
from ilm_jax.eval import charts
from ilm_jax.eval import evaluations as E
from ilm_jax.eval.evaluations import Evaluation
from ilm_jax.eval.metrics import SE_SUFFIX
from ilm_jax.eval.report import markdown_table

RANKING = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
TABLE_FILE = "results.md"
PLOT_FILE = "results.png"
RERANK_PLOT_FILE = "rerank.png"
# Rows of a re-ranking result: what ranked the list, in table order.
RERANK_ROWS = (
  ("ilm", "ILM re-ranks"),
  ("retriever", "retriever order (null)"),
  ("shuffled", "top N shuffled (null)"),
  ("popularity", "popularity"),
)
_PLOTTED_RANKING = tuple(
  m + s for m in ("HR@10", "NDCG@10") for s in ("", SE_SUFFIX)
)
_PLOTTED_TEXT = tuple(
  m + s for m in ("SC", "title_accuracy") for s in ("", SE_SUFFIX)
)


def _with_se(row: dict, name: str, metrics: dict, key: str) -> None:
  """Sets ``row[name]`` to ``metrics[key]`` and, when present, its SE."""
  row[name] = metrics[key]
  if key + SE_SUFFIX in metrics:
    row[name + SE_SUFFIX] = metrics[key + SE_SUFFIX]


def ranking_row(metrics: dict) -> dict[str, float]:
  """Table row of one item ranking's metrics (``ranking_rows``)."""
  row = {}
  for m in RANKING:
    _with_se(row, m, metrics, f"filtered/{m}")
  for m in ("HR@10", "NDCG@10"):
    _with_se(row, f"unfiltered {m}", metrics, f"unfiltered/{m}")
  if "valid_rate" in metrics:
    row["valid_rate"] = metrics["valid_rate"]
  for m in ("users", "filtered/users"):
    if m in metrics:
      row["users"] = metrics[m]
      break
  return row


def ranking_rows(results: dict) -> dict[str, dict[str, float]]:
  """``generate`` evaluations: label -> metrics, each followed by
  ``"retrieval/" + label`` (the retrieval head's full ranking) when trained.

  Columns: filtered HR/NDCG, then unfiltered HR@10 / NDCG@10, then the
  share of beams that spelled an item and the users evaluated; each HR/NDCG
  comes with its standard error (``"HR@10_se"``, ``"unfiltered HR@10_se"``)
  when the results hold one.
  """
  rows = {}
  for entry in E.result_entries(results, E.GENERATE):
    label = Evaluation.of_entry(entry).label
    rows[label] = ranking_row(entry["metrics"])
    if "retrieval" in entry:
      rows[f"retrieval/{label}"] = ranking_row(entry["retrieval"])
  return rows


def agreement_rows(results: dict) -> dict[str, dict[str, float]]:
  """``generate`` evaluations' identifier agreement
  (``eval.identifier_agreement``): one row per evaluation and prefix
  length, the share of users whose top identifier starts as the held-out
  item's (with its SE) beside chance (uniform, popularity-weighted) and
  beside naming the latest history item again, and how many distinct items the
  evaluation's first choices and whole lists hold."""
  rows = {}
  for entry in E.result_entries(results, E.GENERATE):
    found = entry.get("identifiers")
    if not found:
      continue
    label = Evaluation.of_entry(entry).label
    for level in found["prefix_agreement"]:
      row = {}
      _with_se(row, "top-1 agrees", level, "agreement")
      row["chance"] = level["chance"]
      for key, name in (
        ("popularity_chance", "popularity-weighted"),
        ("last_item", "latest history item"),
      ):
        if key in level:
          row[name] = level[key]
      row["distinct top-1"] = found["distinct_top1"]
      row["distinct listed"] = found["distinct_listed"]
      rows[f"{label}, first {level['digits']} digits"] = row
  return rows


def _mean_se(std: float, n: int) -> float:
  """SE of a mean from the population std (ddof=0) of ``n`` values."""
  return float(std / math.sqrt(n - 1)) if n > 1 else 0.0


def text_row(metrics: dict) -> dict[str, float]:
  """SC (mean, SE, std), title accuracy (with SE) and prompts of one text
  evaluation's metrics.

  The SEs are those ``metrics`` holds (``"SC_se"``, ``"title_accuracy_se"``)
  or else follow from ``SC_std`` (a ddof=0 std over prompts) and, for the
  title accuracy (a share of prompts), from the binomial variance.
  """
  n = metrics.get("prompts")
  row = {}
  for m in ("SC", "SC_std", "title_accuracy", "prompts"):
    if m not in metrics:
      continue
    row[m] = metrics[m]
    se = metrics.get(m + SE_SUFFIX)
    if se is None and n is not None:
      if m == "SC" and "SC_std" in metrics:
        se = _mean_se(metrics["SC_std"], n)
      elif m == "title_accuracy":
        p = metrics[m]
        se = _mean_se(math.sqrt(max(p * (1.0 - p), 0.0)), n)
    if se is not None:
      row[m + SE_SUFFIX] = se
  return row


def text_rows(results: dict) -> dict[str, dict[str, float]]:
  """``text`` evaluations: label (``task/templates``) -> ``text_row``."""
  return {
    Evaluation.of_entry(entry).label: text_row(entry["metrics"])
    for entry in E.result_entries(results, E.TEXT)
  }


def paired_cell(c: dict) -> str:
  """One metric of ``metrics.paired_comparison`` as "+0.0123 ± 0.0045
  (above)"."""
  return f"{c['diff']:+.4f} ± {c['se']:.4f} ({c['verdict']})"


def rerank_rows(results: dict) -> dict[str, dict]:
  """``rerank`` evaluations: per evaluation, the ILM and the rows it is
  compared with.

  Row names are ``"{task}/{split}/{templates}: {model}"``; the ILM's row
  also says how it differs from each null on HR@10 (paired difference ±
  SE, "above" only beyond two SEs).
  """
  rows = {}
  for entry in E.result_entries(results, E.RERANK):
    key, result = Evaluation.of_entry(entry).label, entry["metrics"]
    for name, label in RERANK_ROWS:
      metrics = result.get(name)
      if metrics is None:
        continue
      row = {}
      for m in RANKING:
        _with_se(row, m, metrics, m)
      row["users"] = metrics.get("users")
      if name == "ilm":
        for null in ("retriever", "shuffled"):
          if f"vs_{null}" in result:
            row[f"HR@10 vs {null}"] = paired_cell(result[f"vs_{null}"]["HR@10"])
      rows[f"{key}: {label}"] = row
  return rows


def list_rows(results: dict) -> dict[str, dict]:
  """Where the held-out item sits in candidate lists: the training lists
  (inner retriever, every held-out position) beside each evaluation."""
  rows = {}
  training = results.get("rerank_training", {})
  for key, name in (("lists", "ALS"), ("lists_sasrec", "SASRec")):
    if training.get(key):
      rows[f"training lists (inner {name})"] = training[key]
  seen = set()
  for entry in E.result_entries(results, E.RERANK):
    split, result = entry["split"], entry["metrics"]
    key = (split, result.get("retrieved_by", "?"))
    if "lists" in result and key not in seen:
      seen.add(key)
      rows[f"evaluation lists ({split}, {key[1]})"] = result["lists"]
  return rows


def _rerank_setting(results: dict) -> str:
  """How candidates were listed, with each retriever's ceiling (the share
  of lists holding the held-out item: no re-ranking can beat it)."""
  settings = {}
  for entry in E.result_entries(results, E.RERANK):
    result = entry["metrics"]
    by = result.get("retrieved_by", "?")
    if by in settings:
      continue
    n = result.get("num_candidates", "?")
    recall = result.get("lists", {}).get(f"recall@{n}")
    ceiling = f", target in top {n}: {recall:.4f}" if recall is not None else ""
    settings[by] = (
      f"top {n} of {by}, shown in {result.get('order', '?')} order, named "
      f"by {result.get('labels', '?')}{ceiling} ({entry['split']})"
    )
  return "; ".join(settings.values())


def tables(results: dict, name: str) -> str:
  """Both markdown tables of one stage-2 result (``name`` titles them)."""
  variant = results.get("variant", "ilm")
  budget = (
    f"{results.get('steps', '?')} steps, "
    f"{results.get('train_examples', '?')} training prompts"
  )
  out = []
  rerank = rerank_rows(results)
  if rerank:
    out.append(
      markdown_table(
        rerank,
        f"{name}: stage 2 ({variant}, {budget}), re-ranking retrieved "
        f"candidates ({_rerank_setting(results)}); full-catalogue HR/NDCG, "
        "seen items removed",
      )
    )
  lists = list_rows(results)
  if lists:
    out.append(
      markdown_table(
        lists,
        f"{name}: the held-out item in candidate lists (recall of the top "
        "N; 1-based rank where present)",
      )
    )
  ranking = ranking_rows(results)
  if ranking:
    out.append(
      markdown_table(
        ranking,
        f"{name}: stage 2 ({variant}, {budget}), item ranking by "
        "constrained beam search (filtered unless said)",
      )
    )
  agreement = agreement_rows(results)
  if agreement:
    out.append(
      markdown_table(
        agreement,
        f"{name}: the top generated identifier against the held-out "
        "item's, digit by digit",
      )
    )
  text = text_rows(results)
  if text:
    out.append(
      markdown_table(text, f"{name}: stage 2 ({variant}), generated text")
    )
  return "\n".join(out)


def result_panels(
  results: dict, baselines: dict | None = None
) -> list[charts.Panel]:
  """The panels of ``results.png``: item ranking by generation (with the
  baselines as reference lines) and generated text, never on one axis."""
  ranking = {
    key: {m: row[m] for m in _PLOTTED_RANKING if m in row}
    for key, row in ranking_rows(results).items()
  }
  text = {
    key: {m: row[m] for m in _PLOTTED_TEXT if m in row}
    for key, row in text_rows(results).items()
  }
  return [
    charts.Panel(
      "item ranking by generation (filtered)",
      ("HR@10", "NDCG@10"),
      ranking,
      baselines or {},
    ),
    charts.Panel("generated text", ("SC", "title_accuracy"), text),
  ]


def rerank_panels(results: dict) -> list[charts.Panel]:
  """One panel per re-ranking evaluation: the ILM and the shuffled list as
  bars, the retriever's own order and popularity as reference lines."""
  panels = []
  for entry in E.result_entries(results, E.RERANK):
    result = entry["metrics"]
    named = dict(RERANK_ROWS)
    bars = {named[k]: result[k] for k in ("ilm", "shuffled") if k in result}
    by = result.get("retrieved_by", "")
    named["retriever"] = (
      "ALS order" if by == "als" else f"{by or 'retriever'} order"
    )
    references = {
      named[k]: result[k] for k in ("retriever", "popularity") if k in result
    }
    panels.append(
      charts.Panel(Evaluation.of_entry(entry).label, RANKING, bars, references)
    )
  return panels


def write(
  results: dict,
  out_dir: str | pathlib.Path,
  name: str,
  baselines: dict | None = None,
) -> str:
  """Writes ``results.md``, ``results.png`` and ``rerank.png`` in
  ``out_dir``; returns the markdown.

  Args:
    results: what ``stage2.run`` returned.
    out_dir: the stage-2 directory.
    name: the dataset's name (titles).
    baselines: {model: {"HR@10": v, "NDCG@10": v}} drawn as reference lines
      on the generation panel (popularity and ALS, full ranking, filtered,
      on the generation's split); None draws none.
  """
  out_dir = files.path(out_dir)
  text = tables(results, name)
  files.write_text(out_dir / TABLE_FILE, text)
  charts.panels_chart(
    result_panels(results, baselines),
    out_dir / PLOT_FILE,
    f"{name}: stage 2 (± 1 SE)",
  )
  charts.panels_chart(
    rerank_panels(results),
    out_dir / RERANK_PLOT_FILE,
    f"{name}: re-ranking (± 1 SE)",
  )
  return text
