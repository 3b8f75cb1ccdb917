"""Stage "eval": popularity and CF (dot-product) baselines, full ranking."""

from __future__ import annotations

import pathlib

import ml_collections
import tensorboardX

from ilm_jax import distributed, files
from ilm_jax.data import load_split
from ilm_jax.eval import full_ranking, report
from ilm_jax.experiment_config import BASELINES
from ilm_jax.pipeline.cf import cf_table

EVAL_DIR = "eval"
MODES = ("unfiltered", "filtered")
USER_RANKS_PREFIX = "user_ranks_"


def run_baselines(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> dict:
  """Evaluates popularity and ALS; writes metrics JSON, tables and plots.

  Returns:
    {model: {split: {mode: {metric: value}}}}.
  """
  workdir = files.path(workdir)
  split = load_split(config.dataset)
  table = cf_table(config, workdir, split)
  _, train_items = split.train_interactions()
  scorers = {
    "popularity": full_ranking.popularity_scorer(train_items, split.num_items),
    "als": full_ranking.dot_product_scorer(table.users, table.items),
  }
  results: dict = {name: {} for name in scorers}
  ranks: dict = {name: {} for name in scorers}
  for split_name in config.eval.splits:
    targets = split.targets(split_name)
    seen = split.seen_items(split_name)
    for name, score_fn in scorers.items():
      results[name][split_name], by_mode = full_ranking.evaluate_modes(
        score_fn,
        targets,
        split.num_items,
        seen,
        MODES,
        ks=tuple(config.eval.ks),
        batch_size=config.eval.batch_size,
      )
      ranks[name][split_name] = by_mode["filtered"]
  write_results(results, workdir / EVAL_DIR, "baselines", config)
  for name, by_split in ranks.items():
    write_user_ranks(workdir / EVAL_DIR, name, by_split)
  return results


def write_user_ranks(out: pathlib.Path, model: str, ranks: dict) -> None:
  """Writes ``user_ranks_<model>.json``: per split, the filtered full
  ranking's 0-based rank of every user's held-out item, in the layout of a
  stage-2 ``generate`` entry's ``user_ranks`` ({"users", "filtered"}), so
  a generated list can be compared with the baseline user by user.

  Args:
    out: the eval directory.
    model: the baseline's name.
    ranks: {split: int[N] ranks of users 0..N-1}.
  """
  files.write_json(
    out / f"{USER_RANKS_PREFIX}{model}.json",
    {
      split_name: {
        "users": list(range(len(r))),
        "filtered": [int(x) for x in r],
      }
      for split_name, r in ranks.items()
    },
  )


def read_user_ranks(workdir, models) -> dict:
  """{model: {split: {"users", "filtered"}}} of the ``models`` whose
  ``write_user_ranks`` file is in ``workdir/eval`` (others are left out)."""
  out = {}
  for model in models:
    path = files.path(workdir) / EVAL_DIR / f"{USER_RANKS_PREFIX}{model}.json"
    if path.exists():
      out[model] = files.read_json(path)
  return out


def baseline_table(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> dict:
  """Stage "eval": popularity and ALS, then SASRec when
  ``config.eval.baselines`` names it, in one table (``eval/baselines.*``).

  Returns:
    {model: {split: {mode: {metric: value}}}}, models in table order.
  """
  unknown = set(config.eval.baselines) - set(BASELINES)
  if unknown:
    raise ValueError(
      f"eval.baselines: unknown {sorted(unknown)}; choose from {BASELINES}"
    )
  results = run_baselines(config, workdir)
  if "sasrec" in config.eval.baselines:
    # Imported here: SASRec's pipeline imports this module's writers.
    from ilm_jax.pipeline.sasrec import run_sasrec

    results.update(run_sasrec(config, workdir))
  results = {m: r for m, r in results.items() if m in config.eval.baselines}
  write_results(results, files.path(workdir) / EVAL_DIR, "baselines", config)
  return results


def write_results(results: dict, out: pathlib.Path, name: str, config) -> str:
  """Writes ``<name>.json``, ``<name>.md``, a plot and TensorBoard scalars.

  Returns:
    The markdown tables (also logged).
  """
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / f"{name}.json", results)
  text = [f"# {name}: {config.dataset.name}\n"]
  # Process 0 of a multi-host job writes the events; the others discard.
  writer = tensorboardX.SummaryWriter(
    str(out / "tensorboard"), write_to_disk=distributed.is_primary()
  )
  splits = list(dict.fromkeys(s for r in results.values() for s in r))
  for split_name in splits:
    for mode in MODES:
      rows = {
        model: by_split[split_name][mode]
        for model, by_split in results.items()
        if split_name in by_split and mode in by_split[split_name]
      }
      if not rows:
        continue
      title = f"{split_name}, {mode}"
      text.append(report.markdown_table(rows, title))
      report.bar_plot(
        rows,
        out / f"{name}_{split_name}_{mode}.png",
        f"{config.dataset.name}: {title}",
      )
      for model, values in rows.items():
        for metric, value in values.items():
          tag = f"{name}/{split_name}/{mode}/{model}/{metric}".replace(
            "@", "_at_"
          )
          writer.add_scalar(tag, value, 0)
  writer.close()
  markdown = "\n".join(text)
  files.write_text(out / f"{name}.md", markdown)
  return markdown


def summary_rows(results: dict, split_name="test", mode="unfiltered"):
  """{model: metrics} for one split and mode (for printing)."""
  return {m: r[split_name][mode] for m, r in results.items() if split_name in r}
