r"""The accelerator run: ILM, ILM-rand, MLP and text-only on two datasets.

On one GPU or TPU host, trains and evaluates every stage-2 variant of
``launch/compare_stage2.py`` (generation over the whole catalogue and
re-ranking of ALS's and SASRec's candidates, beside popularity, ALS and
SASRec, every figure ± SE) on ML-100K and MovieLens latest-small under the
``:accel`` budget (``ilm_jax/experiment_config.py``), and writes one report,
``accelerator_run.md`` / ``.json``, with the hardware, the budget and the
wall time of every part. ``--sweep`` adds the query-number sweep (K = 1, 2,
4, 8, 16) and the stage-1 loss ablations as rows of the same tables.

Examples:
  python launch/accelerator_run.py --workdir=workdir/accelerator_run
  python launch/accelerator_run.py --sweep --datasets=ml100k
  # a tiny CPU form (what the tests run): any config field, every dataset
  python launch/accelerator_run.py --datasets=default --variants=text \
      --override=stage2.llm=tiny --override=stage2.train.num_steps=2 ...
"""

import ast
import os
import platform
import time

import jax
from absl import app, flags

from ilm_jax import console, distributed, files, workdir_lock
from ilm_jax.experiment_config import get_config
from ilm_jax.pipeline import stage2_comparison

# --datasets names -> registered dataset names (as configs/<name>.py).
DATASETS = {"ml100k": "openp5-ml100k", "default": "ml-latest-small"}

_DATASETS = flags.DEFINE_list(
  "datasets", list(DATASETS), f"Datasets to run, from {list(DATASETS)}."
)
_BUDGET = flags.DEFINE_string(
  "budget", "accel", "Budget of every config (cpu, small, accel, full)."
)
_VARIANTS = flags.DEFINE_list(
  "variants",
  list(stage2_comparison.DEFAULT_VARIANTS),
  "Stage-2 variants, from: " + ", ".join(stage2_comparison.VARIANTS),
)
_SWEEP = flags.DEFINE_bool(
  "sweep",
  False,
  "Also the query-number sweep (ilm-k1 .. ilm-k16) and the stage-1 loss "
  "ablations (ilm-it, ilm-it-ii, ilm-it-ui).",
)
_OVERRIDE = flags.DEFINE_multi_string(
  "override",
  [],
  "field=value set in every dataset's config (Python literal or string), "
  "e.g. --override=stage2.train.num_steps=2000.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  "workdir/accelerator_run",
  "Where each dataset's comparison (<workdir>/<dataset>) and the report go.",
)
_CACHE = console.define_compilation_cache()
_HOST_MEMORY = console.define_host_memory()
distributed.define_flags()


def apply_override(config, text: str) -> None:
  """Sets ``a.b.c=value`` in ``config`` (the value as a Python literal)."""
  path, sep, raw = text.partition("=")
  if not sep or not path:
    raise app.UsageError(f"--override {text!r}: expected field=value")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  *parents, leaf = path.split(".")
  node = config
  for name in parents:
    if name not in node:
      raise app.UsageError(f"--override {text!r}: no field {path!r}")
    node = node[name]
  if leaf not in node:
    raise app.UsageError(f"--override {text!r}: no field {path!r}")
  node[leaf] = value


def hardware() -> dict:
  """What the run ran on: platform, device kind and count, versions."""
  devices = jax.devices()
  return {
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "devices": len(devices),
    "processes": jax.process_count(),
    "host": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
  }


def main(argv):
  console.start(argv, _CACHE.value, _HOST_MEMORY.value)
  unknown = set(_DATASETS.value) - set(DATASETS)
  if not _DATASETS.value:
    raise app.UsageError(f"--datasets: name at least one of {list(DATASETS)}")
  if unknown:
    raise app.UsageError(
      f"unknown datasets {sorted(unknown)}; {list(DATASETS)}"
    )
  variants = list(_VARIANTS.value)
  if _SWEEP.value:
    variants += [
      *stage2_comparison.QUERY_SWEEP,
      *stage2_comparison.STAGE1_ABLATIONS,
    ]
  variants = list(dict.fromkeys(variants))
  configs = {}
  for name in _DATASETS.value:
    config = get_config(DATASETS[name], _BUDGET.value)
    for text in _OVERRIDE.value:
      apply_override(config, text)
    configs[name] = config
  report = {
    "hardware": hardware(),
    "budget": _BUDGET.value,
    "overrides": list(_OVERRIDE.value),
    "variants": variants,
    "datasets": {},
  }
  sections = []
  start = time.time()
  for name, config in configs.items():
    workdir = os.path.join(_WORKDIR.value, name)
    began = time.time()
    with workdir_lock.hold(workdir):
      out = stage2_comparison.compare(config, workdir, tuple(variants))
    seconds = time.time() - began
    report["datasets"][name] = {
      "seconds": seconds,
      "parts": out["seconds"],
      "budget": out["budget"],
      "rows": out["rows"],
      "rerank_rows": out["rerank_rows_by_retriever"],
      "stage1": out["stage1_rows"],
    }
    table = out["table"]  # compare.md, which only process 0 wrote
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in out["seconds"].items())
    sections.append(
      f"## {config.dataset.name}\n\nwall time {seconds:.0f} s ({parts})\n\n"
      + table
    )
    # Written after every dataset, so a run stopped by a time limit keeps
    # the tables of the datasets it finished.
    report["seconds"] = time.time() - start
    markdown = write_report(report, sections, len(configs))
  if distributed.is_primary():  # one copy of the report, not one per host
    print(markdown)


def write_report(report: dict, sections: list[str], total: int) -> str:
  """Writes accelerator_run.md / .json for the datasets done so far (of
  ``total``); returns the markdown."""
  hw = report["hardware"]
  done = len(report["datasets"])
  header = (
    "# Accelerator run\n\n"
    f"{hw['devices']} x {hw['device_kind']} ({hw['platform']}), "
    f"{hw['processes']} process(es), jax {hw['jax']}; budget "
    f"`:{report['budget']}`, variants {', '.join(report['variants'])}; "
    f"wall time {report['seconds']:.0f} s"
    + (f" ({done} of {total} datasets so far)" if done < total else "")
    + ".\n"
  )
  if report["overrides"]:
    header += f"\nOverrides: {' '.join(report['overrides'])}\n"
  markdown = "\n\n".join([header, *sections])
  files.write_text(os.path.join(_WORKDIR.value, "accelerator_run.md"), markdown)
  files.write_json(
    os.path.join(_WORKDIR.value, "accelerator_run.json"), report, default=str
  )
  return markdown


if __name__ == "__main__":
  app.run(main)
