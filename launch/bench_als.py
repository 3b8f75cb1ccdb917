r"""ALS benchmark: our JAX implicit ALS against the `implicit` library.

Fits both on the same training interactions (MovieLens-1M by default, from
../shared/data), with the same width, sweeps, regularisation and confidence
(c = 1 + alpha * count), for both solvers (exact Cholesky and 3-step
conjugate gradient), and prints wall times, ratios and HR@10 / NDCG@10 on the
same held-out split, full ranking with training items filtered. Writes
``bench_als.json`` to --workdir.

Our times are given cold (first fit in the process, jit compilation included)
and warm (a second fit, compiled code reused).

  python launch/bench_als.py --dataset=ml-1m --workdir=workdir/bench_als
"""

import os

# implicit wants single-threaded BLAS (it parallelises over users itself).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import time
import types

import jax
import numpy as np
from absl import app, flags

from ilm_jax import console, files
from ilm_jax.cf.als import ALSConfig, train_als
from ilm_jax.data import leave_one_out, load_dataset
from ilm_jax.eval.full_ranking import (
  dot_product_scorer,
  evaluate_scorer,
)

_DATASET = flags.DEFINE_string("dataset", "ml-1m", "A dataset name.")
_PATH = flags.DEFINE_string("path", "", "Raw data path ('' = default).")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding width.")
_SWEEPS = flags.DEFINE_integer("sweeps", 15, "ALS sweeps.")
_REG = flags.DEFINE_float("reg", 1.0, "L2 regularisation.")
_ALPHA = flags.DEFINE_float("alpha", 10.0, "Confidence slope.")
_SOLVERS = flags.DEFINE_list(
  "solvers", ["cg", "cholesky"], "Solvers to compare (cg, cholesky)."
)
_SHUFFLE = flags.DEFINE_bool(
  "shuffle_untimed",
  True,
  "For sources without timestamps (ML-1M ratings_no_time), shuffle each "
  "user's items with a fixed seed before the leave-one-out split, so the "
  "held-out items are random rather than the highest item ids.",
)
_IMPLICIT = flags.DEFINE_bool(
  "compare_implicit",
  True,
  "Also fit the `implicit` library's CPU ALS (off: ours only, e.g. on an "
  "accelerator host without it).",
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_als", "Output dir.")


def _split():
  data = load_dataset(
    types.SimpleNamespace(name=_DATASET.value, path=_PATH.value)
  )
  untimed = _DATASET.value == "ml-1m" and not os.path.exists(
    os.path.join(_PATH.value or "", "ratings.dat")
  )
  if untimed and _SHUFFLE.value:
    rng = np.random.default_rng(0)
    data = type(data)(
      data.name, data.catalog, [rng.permutation(s) for s in data.sequences]
    )
  return leave_one_out(data)


def _quality(split, users, items):
  score_fn = dot_product_scorer(users, items)
  return evaluate_scorer(
    score_fn,
    split.test_items,
    split.num_items,
    seen=split.seen_items("test"),
    ks=(10,),
  )


def _fit_implicit(split, solver):
  import scipy.sparse as sp
  from implicit.cpu.als import AlternatingLeastSquares

  users, items = split.train_interactions()
  counts = sp.csr_matrix(
    (np.ones(len(users), np.float32), (users, items)),
    shape=(split.num_users, split.num_items),
  )
  counts.sum_duplicates()
  # implicit's confidence is the matrix value (times its alpha=1): c = 1 +
  # alpha * count, the same weighting as ours.
  counts.data = 1.0 + _ALPHA.value * counts.data
  model = AlternatingLeastSquares(
    factors=_DIM.value,
    regularization=_REG.value,
    alpha=1.0,
    iterations=_SWEEPS.value,
    use_cg=solver == "cg",
    use_native=True,
    calculate_training_loss=False,
    random_state=0,
  )
  start = time.perf_counter()
  model.fit(counts, show_progress=False)
  seconds = time.perf_counter() - start
  return seconds, model.user_factors, model.item_factors


def main(argv):
  console.quiet_by_default()
  del argv
  split = _split()
  users, items = split.train_interactions()
  print(
    f"{_DATASET.value}: {split.num_users} users, {split.num_items} items, "
    f"{len(users)} training interactions; d={_DIM.value}, "
    f"{_SWEEPS.value} sweeps"
  )
  rows = {}
  for solver in _SOLVERS.value:
    cfg = ALSConfig(
      dim=_DIM.value,
      reg=_REG.value,
      alpha=_ALPHA.value,
      sweeps=_SWEEPS.value,
      solver=solver,
    )
    times = []
    for _ in range(2):  # cold, then warm
      start = time.perf_counter()
      table, _ = train_als(users, items, split.num_users, split.num_items, cfg)
      times.append(time.perf_counter() - start)
    ours_q = _quality(split, table.users, table.items)
    if not _IMPLICIT.value:
      rows[solver] = {
        "ours_cold_s": times[0],
        "ours_warm_s": times[1],
        "ours_HR@10": ours_q["HR@10"],
        "ours_NDCG@10": ours_q["NDCG@10"],
      }
      continue
    imp_s, imp_u, imp_i = _fit_implicit(split, solver)
    imp_q = _quality(split, imp_u, imp_i)
    rows[solver] = {
      "ours_cold_s": times[0],
      "ours_warm_s": times[1],
      "implicit_s": imp_s,
      "speedup_cold": imp_s / times[0],
      "speedup_warm": imp_s / times[1],
      "ours_HR@10": ours_q["HR@10"],
      "ours_NDCG@10": ours_q["NDCG@10"],
      "implicit_HR@10": imp_q["HR@10"],
      "implicit_NDCG@10": imp_q["NDCG@10"],
    }
  header = (
    f"{'solver':9s} {'ours cold s':>11s} {'ours warm s':>11s} "
    f"{'implicit s':>10s} {'x cold':>7s} {'x warm':>7s} "
    f"{'ours HR@10':>10s} {'impl HR@10':>10s}"
  )
  print(f"devices: {jax.devices()}")
  print(header)
  for solver, r in rows.items():
    if "implicit_s" not in r:
      print(
        f"{solver:9s} {r['ours_cold_s']:11.2f} {r['ours_warm_s']:11.2f} "
        f"{'-':>10s} {'-':>7s} {'-':>7s} {r['ours_HR@10']:10.4f}"
      )
      continue
    print(
      f"{solver:9s} {r['ours_cold_s']:11.2f} {r['ours_warm_s']:11.2f} "
      f"{r['implicit_s']:10.2f} {r['speedup_cold']:7.2f} "
      f"{r['speedup_warm']:7.2f} {r['ours_HR@10']:10.4f} "
      f"{r['implicit_HR@10']:10.4f}"
    )
  print("x = implicit seconds / our seconds (>1: ours is faster)")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  out = os.path.join(_WORKDIR.value, "bench_als.json")
  settings = {
    "dataset": _DATASET.value,
    "dim": _DIM.value,
    "sweeps": _SWEEPS.value,
    "reg": _REG.value,
    "alpha": _ALPHA.value,
  }
  files.write_json(out, {**settings, "results": rows})
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
