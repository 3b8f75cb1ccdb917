r"""Compares ILM, ILM-rand, MLP (CoLLM) and text-only prompts under one budget.

Trains the CF table, the classic baselines and stage 1 once in --workdir,
then each stage-2 variant in --workdir/stage2_<variant>, and prints (and
writes as compare.json, compare.md, compare.png) one table: HR@5/10 and
NDCG@5/10 of sequential recommendation by constrained beam search, semantic
consistency of item descriptions and user profiles, title accuracy. The
budget is the config's stage-2 fields (steps, batch, eval users), the same
for every variant.

The stage-1 loss ablations (ilm-it, ilm-it-ii, ilm-it-ui beside ilm, the
full mix) each train their own stage 1 first.

Examples:
  python launch/compare_stage2.py --config=configs/default.py:small \
      --workdir=workdir/compare_small
  python launch/compare_stage2.py --config=configs/ml100k.py:cpu \
      --workdir=workdir/compare_ml100k
  python launch/compare_stage2.py --config=configs/ml1m.py \
      --variants=ilm,ilm-it,ilm-it-ii,ilm-it-ui --workdir=workdir/ablate_ml1m
  # on every worker of a TPU pod slice at once: one jax.distributed job
  # (the multi-host flags of launch/train.py); worker 0 prints and writes
  python launch/compare_stage2.py --config=configs/ml1m.py --distributed \
      --workdir=/mnt/bucket/compare_ml1m
"""

import os

from absl import app, flags
from ml_collections import config_flags

from ilm_jax import console, distributed, workdir_lock
from ilm_jax.eval.report import markdown_table
from ilm_jax.pipeline import stage2_comparison

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/default.py:small",
  "Experiment config file (configs/<name>.py, ':small' for the CPU variant). "
  "Its stage2 fields are the shared budget; override them with "
  "--config.stage2.<field>=<value>.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/compare", "Shared workdir (resumes what is there)."
)
_VARIANTS = flags.DEFINE_list(
  "variants",
  list(stage2_comparison.DEFAULT_VARIANTS),
  "Stage-2 variants to compare, from: " + ", ".join(stage2_comparison.VARIANTS),
)
_SPLIT = flags.DEFINE_enum(
  "split", "test", ["valid", "test"], "Held-out split of the table."
)
_TEMPLATES = flags.DEFINE_enum(
  "templates", "unseen", ["seen", "unseen"], "Prompt templates of the table."
)
_REPORT_ONLY = flags.DEFINE_bool(
  "report_only",
  False,
  "Train nothing: rebuild the table from the variants' results.json files.",
)
_HOST_MEMORY = console.define_host_memory()
distributed.define_flags()


def main(argv):
  console.start(argv, memory_policy=_HOST_MEMORY.value)
  with workdir_lock.hold(_WORKDIR.value):  # one run per workdir
    out = stage2_comparison.compare(
      _CONFIG.value,
      _WORKDIR.value,
      tuple(_VARIANTS.value),
      _SPLIT.value,
      _TEMPLATES.value,
      report_only=_REPORT_ONLY.value,
    )
  if not distributed.is_primary():
    return  # One copy of the tables, not one per host.
  print(f"budget: {out['budget']}")
  print(
    "wall seconds: "
    + ", ".join(f"{k} {v:.0f}" for k, v in out["seconds"].items())
  )
  for retriever, rows in out["rerank_rows_by_retriever"].items():
    print(
      markdown_table(
        rows, f"stage-2 comparison: re-ranking {retriever}'s top N"
      )
    )
  print(markdown_table(out["rows"], "stage-2 comparison"))
  print(f"written: {os.path.join(_WORKDIR.value, 'compare.md')}")


if __name__ == "__main__":
  app.run(main)
