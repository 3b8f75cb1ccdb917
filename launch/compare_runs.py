r"""Prints run A minus run B on one evaluation, paired user by user.

Both runs' ``results.json`` (``<workdir>/stage2/results.json`` or a
variant's ``stage2_<variant>/results.json``) must hold the evaluation with
per-user ranks of the same users (``ilm_jax.eval.paired_runs``).

Example:
  python launch/compare_runs.py --a=workdir/mixed/stage2/results.json \
      --b=workdir/default/stage2/results.json \
      --evaluation=rerank:rerank:test:unseen:sasrec
"""

from absl import app, flags

from ilm_jax import files
from ilm_jax.eval import paired_runs
from ilm_jax.pipeline.stage2_report import paired_cell

_A = flags.DEFINE_string("a", None, "Run A's results.json.", required=True)
_B = flags.DEFINE_string("b", None, "Run B's results.json.", required=True)
_EVALUATION = flags.DEFINE_string(
  "evaluation",
  "generate:sequential:test:unseen",
  "The evaluation entry compared (its name in results.json).",
)
_RANKS_A = flags.DEFINE_string(
  "ranks_a",
  "",
  "A's ranking: 'filtered' (generate), 'ilm' or 'retriever' (rerank); "
  "empty: the kind's own.",
)
_RANKS_B = flags.DEFINE_string("ranks_b", "", "B's ranking (as --ranks_a).")
_OUT = flags.DEFINE_string(
  "out", "", "Optional JSON file the comparison is written to."
)


def main(argv):
  del argv
  out = paired_runs.compare(
    _A.value, _B.value, _EVALUATION.value, _RANKS_A.value, _RANKS_B.value
  )
  print(f"{_EVALUATION.value}: A - B over {out['users']} users (paired)")
  for key, c in out.items():
    if key != "users":
      print(f"  {key}: {paired_cell(c)}")
  if _OUT.value:
    files.write_json(
      _OUT.value,
      {"a": _A.value, "b": _B.value, "evaluation": _EVALUATION.value, **out},
    )


if __name__ == "__main__":
  app.run(main)
