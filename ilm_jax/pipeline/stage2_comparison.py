"""ILM vs its baselines under one budget: ILM, ILM-rand, MLP, text-only.

All variants share the workdir's CF table and stage-1 checkpoint (trained
once, first) and differ only in ``config.stage2`` fields, so a row differs
from another only in what it claims to test. Each variant trains and
evaluates in ``workdir/stage2_<variant>`` (resumable); the summary is one
row per model with the headline metrics.

The stage-1 loss ablations (``ilm-it``, ``ilm-it-ii``, ``ilm-it-ui``; the
full mix is ``ilm``) differ in ``config.stage1.losses`` as well: each trains
its own stage 1 into ``workdir/stage1_<losses>`` and starts stage 2 there.
"""

from __future__ import annotations

import time

import ml_collections

from ilm_jax import files
from ilm_jax.data import prompts as P
from ilm_jax.eval import evaluations as E
from ilm_jax.eval import metrics as M
from ilm_jax.eval.metrics import SE_SUFFIX
from ilm_jax.eval.report import bar_plot, markdown_table
from ilm_jax.pipeline import run as pipeline
from ilm_jax.pipeline import stage1, stage2
from ilm_jax.pipeline.baselines import read_user_ranks, summary_rows
from ilm_jax.pipeline.stage2_report import paired_cell, text_row

# Variant name -> config.stage2 overrides.
VARIANTS: dict[str, dict] = {
  "ilm": {"variant": "ilm", "init": "stage1"},
  "ilm-rand": {"variant": "ilm", "init": "random"},
  "mlp": {"variant": "mlp", "init": "random"},
  "text": {"variant": "text", "init": "random"},
  "ilm+retrieval": {
    "variant": "ilm",
    "init": "stage1",
    "retrieval_weight": 1.0,
  },
  # Beyond the paper: a shared soft prompt beside the entity tokens.
  "ilm+prompt": {"variant": "ilm", "init": "stage1", "shared_prompt": 8},
  # History and candidate items by all K soft tokens instead of pooled ones
  # (the tokens ``identify`` grounds), and ``identify`` on the pooled tokens
  # lists show (README: generation from soft tokens only, ML-100K).
  "ilm-full-tokens": {"variant": "ilm", "init": "stage1", "list_tokens": 0},
  "ilm-pooled-grounding": {
    "variant": "ilm",
    "init": "stage1",
    "grounding_tokens": "list",
  },
}
# Stage-1 loss ablations (the paper's table): ILM whose Q-Former had only
# these stage-1 objectives, each trained once into workdir/stage1_<losses>.
STAGE1_ABLATIONS: dict[str, str] = {
  "ilm-it": "it",
  "ilm-it-ii": "it-ii",
  "ilm-it-ui": "it-ui",
}
for _name, _losses in STAGE1_ABLATIONS.items():
  VARIANTS[_name] = {
    "variant": "ilm",
    "init": "stage1",
    "stage1_dir": f"stage1_{_losses}",
  }
# The query-number sweep (the paper's K figure): ILM with K soft tokens per
# entity, each from its own stage 1 of that shape in workdir/stage1_k<K>.
QUERY_SWEEP: dict[str, int] = {f"ilm-k{k}": k for k in (1, 2, 4, 8, 16)}
for _name, _k in QUERY_SWEEP.items():
  VARIANTS[_name] = {
    "variant": "ilm",
    "init": "stage1",
    "stage1_dir": f"stage1_k{_k}",
  }
# Variants whose stage 1 differs from the shared one.
OWN_STAGE1 = (*STAGE1_ABLATIONS, *QUERY_SWEEP)
DEFAULT_VARIANTS = ("ilm", "ilm-rand", "mlp", "text")
RANKING_KEYS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
RESULTS_FILE = "compare.json"
TABLE_FILE = "compare.md"
PLOT_FILE = "compare.png"


def variant_config(
  config: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the stage-2 fields of variant ``name``."""
  if name not in VARIANTS:
    raise ValueError(
      f"unknown stage-2 variant {name!r}; known: {list(VARIANTS)}"
    )
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in VARIANTS[name].items():
    out.stage2[key] = value
  if name in STAGE1_ABLATIONS:
    out.stage1.losses = STAGE1_ABLATIONS[name]
  if name in QUERY_SWEEP:
    out.qformer.num_queries = QUERY_SWEEP[name]
  return out


def _copy_with_se(row: dict, name: str, metrics: dict, key: str) -> None:
  """``row[name] = metrics[key]`` and likewise for the SE, when present."""
  for suffix in ("", SE_SUFFIX):
    if key + suffix in metrics:
      row[name + suffix] = metrics[key + suffix]


def summary_row(
  results: dict, split: str, templates: str, mode: str = "filtered"
) -> dict[str, float]:
  """Headline metrics of one stage-2 result.

  Args:
    results: ``stage2.run``'s return value.
    split: "valid" or "test".
    templates: "seen" or "unseen".
    mode: "filtered" or "unfiltered" ranking.

  Returns:
    {"HR@5", ..., "NDCG@10"} of sequential recommendation (generative
    decoding), "<task> HR@10" / "<task> NDCG@10" of the other generated
    item tasks (straightforward, conversational), "retrieval HR@10" /
    "retrieval NDCG@10" when the retrieval head was trained, "SC
    description", "SC profile", "title accuracy", "train s" (whichever are
    present; "train s" only for a run that recorded training from step 0
    in one call);
    each metric but "train s" with its
    standard error under ``name + "_se"`` (as ``stage2_report`` gives it).
  """
  row = {}
  seq = E.find_entry(results, E.GENERATE, P.SEQUENTIAL, split, templates) or {}
  for key in RANKING_KEYS:
    _copy_with_se(row, key, seq.get("metrics", {}), f"{mode}/{key}")
  for key in ("HR@10", "NDCG@10"):
    _copy_with_se(
      row, f"retrieval {key}", seq.get("retrieval", {}), f"{mode}/{key}"
    )
  for task in P.ITEM_TASKS[1:]:
    # E.g. straightforward recommendation: the user alone, no history, so
    # only what the user's soft tokens carry can beat popularity.
    other = E.find_entry(results, E.GENERATE, task, split, templates) or {}
    for key in ("HR@10", "NDCG@10"):
      _copy_with_se(
        row, f"{task} {key}", other.get("metrics", {}), f"{mode}/{key}"
      )
  for task in E.TEXT_TASKS:
    text = E.find_entry(results, E.TEXT, task, E.NO_SPLIT, templates)
    if text is not None:
      _copy_with_se(row, f"SC {task}", text_row(text["metrics"]), "SC")
  desc = E.find_entry(results, E.TEXT, P.DESCRIPTION, E.NO_SPLIT, templates)
  if desc is not None and "title_accuracy" in desc["metrics"]:
    _copy_with_se(
      row, "title accuracy", text_row(desc["metrics"]), "title_accuracy"
    )
  # A resumed run's seconds cover only part of its training (none at all
  # when it resumed at its last step only to evaluate): left out; so are
  # those of results written before ``start_step`` was recorded, which
  # cannot tell a training run from a re-evaluation.
  if "train_seconds" in results and results.get("start_step") == 0:
    row["train s"] = results["train_seconds"]
  return row


def rerank_rows(
  results: dict[str, dict],
  split: str,
  templates: str,
  task: str = P.RERANK,
  retriever: str = "",
) -> dict[str, dict]:
  """Re-ranking table: one row per variant, then the nulls and popularity.

  Args:
    results: variant name -> ``stage2.run`` results.
    split, templates: which evaluation.
    task: P.RERANK or P.RERANK_CONVERSATIONAL.
    retriever: whose candidates (an evaluation's fifth field, e.g.
      "sasrec"); "" = the config's ``stage2.rerank.retriever``.

  Returns:
    {row name: {"HR@5", ..., "NDCG@10" with SEs, "users", "HR@10 vs
    retriever": paired difference ± SE and verdict}}; empty when no
    variant re-ranked.
  """
  rows, nulls = {}, {}
  for name, res in results.items():
    entry = E.find_entry(res, E.RERANK, task, split, templates, retriever)
    if entry is None:
      continue
    result = entry["metrics"]
    row = {}
    for m in RANKING_KEYS:
      _copy_with_se(row, m, result["ilm"], m)
    row["users"] = result["ilm"].get("users")
    for null in ("retriever", "shuffled"):
      row[f"HR@10 vs {null}"] = paired_cell(result[f"vs_{null}"]["HR@10"])
    rows[f"{name} (re-ranks)"] = row
    if not nulls:
      for null, label in (
        ("retriever", f"{result.get('retrieved_by', 'retriever')} order"),
        ("shuffled", "top N shuffled"),
      ):
        nulls[f"{label} (null)"] = {m: v for m, v in result[null].items()}
  rows.update(nulls)
  return rows


def _generated_ranks(results, split, templates, tasks):
  """[(row suffix, [(variant, user_ranks)])] per generate task, the
  variants whose entry of that task carries per-user ranks. Sequential
  rows have no suffix, other tasks ", <task>"."""
  out = []
  for task in tasks:
    ranked = []
    for name, res in results.items():
      entry = E.find_entry(res, E.GENERATE, task, split, templates)
      if entry is not None and "user_ranks" in entry:
        ranked.append((name, entry["user_ranks"]))
    out.append(("" if task == P.SEQUENTIAL else f", {task}", ranked))
  return out


def generation_pairs(
  results: dict[str, dict],
  split: str,
  templates: str,
  tasks=(P.SEQUENTIAL,),
) -> dict[str, dict[str, str]]:
  """Paired differences of generation between neighbouring variants.

  The paper's claim is an order (ILM > ILM-rand > MLP > text-only), so each
  variant is compared with the next one in ``results``' order, user by user
  on the filtered lists (``metrics.paired_comparison``): a paired SE is the
  honest yardstick when both ran on the same users, and is usually smaller
  than the two rows' SEs combined.

  Args:
    results: variant name -> ``stage2.run`` results, in the order claimed.
    split, templates: which ``generate`` evaluations.
    tasks: their item tasks (sequential rows first, unlabelled; the others
      end in ", <task>").

  Returns:
    {"a - b": {"HR@5": "+0.0123 ± 0.0045 (above)", ...}} for each neighbouring
    pair whose entries carry per-user ranks of the same users (results from
    before ranks were recorded, or from other user samples, are skipped).
  """
  rows = {}
  for suffix, ranked in _generated_ranks(results, split, templates, tasks):
    for (a, ranks_a), (b, ranks_b) in zip(ranked, ranked[1:]):
      if ranks_a["users"] != ranks_b["users"]:
        continue
      comparison = M.paired_comparison(ranks_a["filtered"], ranks_b["filtered"])
      rows[f"{a} - {b}{suffix}"] = {
        key: paired_cell(c)
        for key, c in comparison.items()
        if key in RANKING_KEYS
      }
  return rows


def baseline_pairs(
  results: dict[str, dict],
  baseline_ranks: dict[str, dict],
  split: str,
  templates: str,
  tasks=(P.SEQUENTIAL,),
) -> dict[str, dict[str, str]]:
  """Paired differences of each variant's generation against the
  full-ranking baselines (popularity, ALS, SASRec).

  A generated list of ten unseen items and a baseline's filtered full
  ranking agree on every cut-off up to ten, so the per-user gains at
  HR@5..NDCG@10 compare user by user (``metrics.paired_comparison``); that
  tests "above popularity" with the paired SE rather than two rows' SEs.

  Args:
    results: variant name -> ``stage2.run`` results.
    baseline_ranks: ``baselines.read_user_ranks``: model -> {split: {"users",
      "filtered"}} over every user of the split.
    split, templates: which ``generate`` evaluations.
    tasks: their item tasks, as ``generation_pairs``.

  Returns:
    {"variant - model": {"HR@5": "+0.0123 ± 0.0045 (above)", ...}} for each
    variant with per-user ranks and each baseline ranked on ``split``.
  """
  rows = {}
  for suffix, ranked in _generated_ranks(results, split, templates, tasks):
    for name, ranks in ranked:
      for model, by_split in baseline_ranks.items():
        if split not in by_split:
          continue
        theirs = dict(
          zip(by_split[split]["users"], by_split[split]["filtered"])
        )
        if not all(u in theirs for u in ranks["users"]):
          continue
        comparison = M.paired_comparison(
          ranks["filtered"], [theirs[u] for u in ranks["users"]]
        )
        rows[f"{name} - {model}{suffix}"] = {
          key: paired_cell(c)
          for key, c in comparison.items()
          if key in RANKING_KEYS
        }
  return rows


def _train_stage1_runs(config, workdir, variants) -> dict[str, float]:
  """Stage-1 runs the variants start from: the shared one (full loss mix)
  and one per variant with its own (loss ablations, query sweep). Returns
  wall seconds per run."""
  seconds = {}
  if any(
    VARIANTS[n].get("init") == "stage1" and n not in OWN_STAGE1
    for n in variants
  ):
    start = time.time()
    pipeline.run(config, workdir, "stage1")
    seconds["stage1"] = time.time() - start
  for name in (n for n in variants if n in OWN_STAGE1):
    start = time.time()
    own = variant_config(config, name)
    stage1.run(own, workdir, own.stage2.stage1_dir)
    seconds[f"stage1 ({own.stage2.stage1_dir})"] = time.time() - start
  return seconds


def stage1_rows(config, workdir, variants) -> dict[str, dict]:
  """Retrieval before and after each stage-1 run the variants start from
  (``stage1.retrieval_summary``), keyed by its directory; runs not found or
  not evaluated are left out."""
  dirs = dict.fromkeys(
    variant_config(config, n).stage2.stage1_dir
    for n in variants
    if VARIANTS[n].get("init") == "stage1"
  )
  rows = {}
  for name in dirs:
    summary = stage1.retrieval_summary(
      files.path(workdir) / name, int(config.stage1.eval.k)
    )
    if summary is not None:
      rows[name] = summary
  return rows


def compare(
  config: ml_collections.ConfigDict,
  workdir,
  variants=DEFAULT_VARIANTS,
  split: str = "test",
  templates: str = "unseen",
  report_only: bool = False,
) -> dict:
  """Trains and evaluates each variant; writes JSON, markdown and a plot.

  Args:
    config: the experiment config (its stage-2 fields are the budget).
    workdir: shared workdir (cf/, eval/, stage1/, stage2_<variant>/).
    variants: names from VARIANTS.
    split: held-out split of the summary table (one that an entry of
      ``stage2.evaluations`` declares).
    templates: template set of the summary table (likewise declared).
    report_only: train and evaluate nothing: rebuild the table from each
      variant's ``stage2_<variant>/results.json`` (e.g. after variants ran
      as separate jobs).

  Returns:
    {"rows": {model: metrics}, "rerank_rows": {model: metrics},
    "results": {variant: stage-2 results}, "seconds": {stage or variant:
    wall seconds}, "budget": {...}, "stage1_rows": {stage-1 directory:
    retrieval before and after}, "table": the markdown of compare.md}.
  """
  workdir = files.path(workdir)
  for name in variants:
    variant_config(config, name)  # fail fast on a bad name
  evaluations = E.parse(config.stage2.evaluations)
  # (split, templates) of every evaluation with a split, in declared order.
  settings = list(
    dict.fromkeys(
      (e.split, e.templates) for e in evaluations if e.split != E.NO_SPLIT
    )
  )
  if split not in {s for s, _ in settings}:
    raise ValueError(
      f"split {split!r} is in no stage2.evaluations entry; declared: "
      f"{sorted({s for s, _ in settings})}"
    )
  if templates not in {e.templates for e in evaluations}:
    raise ValueError(
      f"templates {templates!r} are in no stage2.evaluations entry; "
      f"declared: {sorted({e.templates for e in evaluations})}"
    )
  seconds = {}
  start = time.time()
  base = pipeline.run(config, workdir, "eval")
  seconds["cf+baselines"] = time.time() - start
  if not report_only:
    seconds.update(_train_stage1_runs(config, workdir, variants))
  results, rows = {}, {}
  for model, values in summary_rows(base["eval"], split, "filtered").items():
    rows[f"{model} (all users)"] = {
      k: v
      for k, v in values.items()
      if k.removesuffix(SE_SUFFIX) in RANKING_KEYS
    }
  for name in variants:
    start = time.time()
    out_name = f"{stage2.STAGE_DIR}_{name}"
    if report_only:
      path = workdir / out_name / stage2.RESULTS_FILE
      if not path.exists():
        raise FileNotFoundError(f"{path}: variant {name!r} has no results")
      results[name] = files.read_json(path)
      if "evaluations" not in results[name]:
        # Written before evaluations were declared ("eval" / "rerank"
        # keys): its tables would come out empty.
        raise ValueError(
          f"{path}: no 'evaluations' entries (an older layout); rerun "
          f"variant {name!r}"
        )
    else:
      results[name] = stage2.run(
        variant_config(config, name), workdir, out_name
      )
    seconds[name] = time.time() - start
    rows[name] = summary_row(results[name], split, templates)
  c = config.stage2
  budget = {
    "steps": int(c.train.num_steps),
    "batch_size": int(c.batch_size),
    "learning_rate": float(c.train.learning_rate),
    "max_history": int(c.max_history),
    "indexing": config.dataset.indexing,
    "balanced_tree": bool(config.dataset.get("balanced_tree", False)),
    "examples_per_task": int(c.examples_per_task),
    "eval_users": int(c.eval.max_users),
    "text_prompts": int(c.eval.max_text_prompts),
    "llm": c.llm,
    "dataset": config.dataset.name,
    "max_users": int(config.dataset.max_users),
    "tasks": list(c.tasks),
    "evaluations": list(c.evaluations),
    "list_tokens": int(c.list_tokens),
    "grounding_tokens": c.get("grounding_tokens", "entity"),
    "rerank": c.rerank.to_dict(),
  }
  out = {"rows": rows, "results": results, "seconds": seconds, "budget": budget}
  files.write_json(workdir / RESULTS_FILE, out, default=str)
  title = (
    f"{config.dataset.name}: stage-2 variants, {split}, {templates} "
    f"templates, filtered ({budget['steps']} steps x {budget['batch_size']})"
  )
  # Every evaluated (split, template set) gets its own table in the file;
  # the chosen one comes first and is the one plotted.
  tables = [markdown_table(rows, title)]
  for other_split, other in settings:
    if (other_split, other) == (split, templates):
      continue
    other_rows = {
      name: summary_row(results[name], other_split, other) for name in variants
    }
    tables.append(
      markdown_table(
        other_rows,
        f"{config.dataset.name}: {other_split}, {other} templates, filtered",
      )
    )
  # Re-ranking tables first: the config's retriever's candidates, then
  # those of every other retriever an evaluation named (e.g. SASRec's).
  r = c.rerank
  by_retriever = {}
  for retriever in ("", *E.RETRIEVERS):
    reranked = rerank_rows(results, split, templates, retriever=retriever)
    if not reranked:
      continue
    by_retriever[retriever or r.retriever] = reranked
    tables.insert(
      len(by_retriever) - 1,
      markdown_table(
        reranked,
        f"{config.dataset.name}: re-ranking the top {r.num_candidates} of "
        f"{retriever or r.retriever} ({r.order} order, {r.labels}), {split}, "
        f"{templates} templates ({budget['steps']} steps x "
        f"{budget['batch_size']})",
      ),
    )
  pairs = generation_pairs(results, split, templates, P.ITEM_TASKS)
  if pairs:
    tables.insert(
      len(by_retriever) + 1,
      markdown_table(
        pairs,
        f"{config.dataset.name}: generation, each variant minus the next "
        f"(paired over the same users), {split}, {templates} templates",
      ),
    )
  out["generation_pairs"] = pairs
  # What the ILM variants' Q-Formers learnt in stage 1: ILM against ILM-rand
  # only tests stage 1 where it aligned anything.
  out["stage1_rows"] = stage1_rows(config, workdir, variants)
  if out["stage1_rows"]:
    tables.append(
      markdown_table(
        out["stage1_rows"],
        f"{config.dataset.name}: stage-1 runs the variants start from, "
        "retrieval before and after training",
      )
    )
  against = baseline_pairs(
    results,
    read_user_ranks(workdir, config.eval.baselines),
    split,
    templates,
    P.ITEM_TASKS,
  )
  if against:
    tables.insert(
      len(by_retriever) + 1 + bool(pairs),
      markdown_table(
        against,
        f"{config.dataset.name}: generation minus each full-ranking "
        f"baseline (paired over the same users), {split}, {templates} "
        "templates",
      ),
    )
  out["baseline_pairs"] = against
  out["rerank_rows"] = by_retriever.get(r.retriever, {})
  out["rerank_rows_by_retriever"] = by_retriever
  files.write_json(workdir / RESULTS_FILE, out, default=str)
  table = "\n\n".join(tables)
  files.write_text(workdir / TABLE_FILE, table)
  plotted = {
    m: {k: v for k, v in r.items() if k != "train s"} for m, r in rows.items()
  }
  bar_plot(plotted, workdir / PLOT_FILE, title)
  # Returned as well as written: in a multi-host job only process 0 writes
  # the file, and other hosts may not share its disk.
  out["table"] = table
  return out
