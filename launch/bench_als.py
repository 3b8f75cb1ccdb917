r"""ALS benchmark: our JAX implicit ALS against the `implicit` library.

Fits both on the same training interactions (MovieLens-1M by default, from
../shared/data), with the same width, sweeps, regularisation and confidence
(c = 1 + alpha * count), for both solvers (exact Cholesky and 3-step
conjugate gradient), and prints wall times, ratios, model-FLOP utilisation
against this machine's measured matmul peak, and HR@10 / NDCG@10 on the same
held-out split (full ranking, training items filtered). Writes
``bench_als.json`` to --workdir.

Threads: both sides get --threads (default: every core). implicit runs that
many OpenMP threads; ours runs on that many JAX CPU devices (one thread
each) with the rows' chunks split over them by ``shard_map``, the same code
that splits a catalogue over an accelerator mesh. On an accelerator host
ours runs on its devices instead.

Our times are given cold (first fit in the process, jit compilation included)
and warm (a second fit, compiled code reused).

--synthetic_rows adds the scale-out table: random interactions for R users
and R items (20 per user, item popularity falling as rank^-0.5) at each R,
conjugate gradient only, seconds per sweep as R grows 10x and 100x.

  python launch/bench_als.py --dataset=ml-1m --workdir=workdir/bench_als
  python launch/bench_als.py --solvers=cg --synthetic_rows=10000,100000,1000000
"""

import os

_THREADS_DEFAULT = os.cpu_count() or 1


def _pin_threads(argv):
  """Sets one XLA thread per CPU device and OpenBLAS to one thread before
  jax is imported (implicit parallelises over rows itself)."""
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  for arg in argv:
    if arg.startswith("--threads="):
      return int(arg.split("=", 1)[1])
  return _THREADS_DEFAULT


import sys  # noqa: E402

_PINNED = _pin_threads(sys.argv)
os.environ["XLA_FLAGS"] = " ".join(
  [
    os.environ.get("XLA_FLAGS", ""),
    "--xla_cpu_multi_thread_eigen=false",
    "intra_op_parallelism_threads=1",
  ]
).strip()

import time  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

# One CPU device per thread; only the CPU backend reads this.
jax.config.update("jax_num_cpu_devices", _PINNED)

from ilm_jax import console, files, mfu  # noqa: E402
from ilm_jax.cf.als import ALSConfig, train_als  # noqa: E402
from ilm_jax.data import leave_one_out, load_dataset  # noqa: E402
from ilm_jax.eval.full_ranking import (  # noqa: E402
  dot_product_scorer,
  evaluate_scorer,
)
from ilm_jax.sharding.mesh import make_mesh  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "ml-1m", "A dataset name.")
_PATH = flags.DEFINE_string("path", "", "Raw data path ('' = default).")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding width.")
_SWEEPS = flags.DEFINE_integer("sweeps", 15, "ALS sweeps.")
_REG = flags.DEFINE_float("reg", 1.0, "L2 regularisation.")
_ALPHA = flags.DEFINE_float("alpha", 10.0, "Confidence slope.")
_SOLVERS = flags.DEFINE_list(
  "solvers", ["cg", "cholesky"], "Solvers to compare (cg, cholesky)."
)
_THREADS = flags.DEFINE_integer(
  "threads",
  _THREADS_DEFAULT,
  "Threads for both sides: implicit's OpenMP threads and our JAX CPU "
  "devices (read before jax starts).",
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
_SYNTHETIC = flags.DEFINE_list(
  "synthetic_rows",
  [],
  "Scale-out table: users = items = R for each R listed (conjugate "
  "gradient, 2 sweeps, seconds per sweep); empty: skip.",
)
_SYNTHETIC_ONLY = flags.DEFINE_bool(
  "synthetic_only", False, "Skip the dataset table (scale-out table only)."
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_als", "Output dir.")

_PER_USER = 20  # synthetic interactions per user
_SYNTHETIC_SWEEPS = 2


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


def _fit_implicit(users, items, num_users, num_items, solver, sweeps):
  import scipy.sparse as sp
  from implicit.cpu.als import AlternatingLeastSquares

  counts = sp.csr_matrix(
    (np.ones(len(users), np.float32), (users, items)),
    shape=(num_users, num_items),
  )
  counts.sum_duplicates()
  # implicit's confidence is the matrix value (times its alpha=1): c = 1 +
  # alpha * count, the same weighting as ours.
  counts.data = 1.0 + _ALPHA.value * counts.data
  model = AlternatingLeastSquares(
    factors=_DIM.value,
    regularization=_REG.value,
    alpha=1.0,
    iterations=sweeps,
    use_cg=solver == "cg",
    use_native=True,
    calculate_training_loss=False,
    random_state=0,
    num_threads=_THREADS.value,
  )
  start = time.perf_counter()
  model.fit(counts, show_progress=False)
  seconds = time.perf_counter() - start
  return seconds, model.user_factors, model.item_factors


def _config(solver, sweeps):
  return ALSConfig(
    dim=_DIM.value,
    reg=_REG.value,
    alpha=_ALPHA.value,
    sweeps=sweeps,
    solver=solver,
  )


def _fit_ours(users, items, num_users, num_items, cfg, mesh):
  """(cold seconds, warm seconds, table): two fits, the second reuses the
  compiled program."""
  times = []
  for _ in range(2):
    start = time.perf_counter()
    table, _ = train_als(users, items, num_users, num_items, cfg, mesh=mesh)
    times.append(time.perf_counter() - start)
  return times[0], times[1], table


def _nonzeros(users, items, num_items):
  return len(np.unique(users.astype(np.int64) * num_items + items))


def _dataset_table(mesh, peak):
  split = _split()
  users, items = split.train_interactions()
  nonzeros = _nonzeros(users, items, split.num_items)
  print(
    f"{_DATASET.value}: {split.num_users} users, {split.num_items} items, "
    f"{len(users)} training interactions ({nonzeros} distinct pairs); "
    f"d={_DIM.value}, {_SWEEPS.value} sweeps"
  )
  rows = {}
  for solver in _SOLVERS.value:
    cfg = _config(solver, _SWEEPS.value)
    # train_als keeps the exact solver on one device of a CPU mesh (see
    # als._stalls_beside_lapack); the conjugate gradient is split over all.
    cold, warm, table = _fit_ours(
      users, items, split.num_users, split.num_items, cfg, mesh
    )
    flops = mfu.als_fit_flops(
      nonzeros,
      split.num_users,
      split.num_items,
      _DIM.value,
      _SWEEPS.value,
      solver,
      cfg.cg_steps,
    )
    ours_q = _quality(split, table.users, table.items)
    row = {
      "ours_cold_s": cold,
      "ours_warm_s": warm,
      "ours_mfu": mfu.utilisation(flops, warm, peak)["mfu"],
      "ours_HR@10": ours_q["HR@10"],
      "ours_NDCG@10": ours_q["NDCG@10"],
      "fit_gflop": flops / 1e9,
    }
    if _IMPLICIT.value:
      imp_s, imp_u, imp_i = _fit_implicit(
        users, items, split.num_users, split.num_items, solver, _SWEEPS.value
      )
      imp_q = _quality(split, imp_u, imp_i)
      row.update(
        implicit_s=imp_s,
        implicit_mfu=mfu.utilisation(flops, imp_s, peak)["mfu"],
        speedup_cold=imp_s / cold,
        speedup_warm=imp_s / warm,
        **{"implicit_HR@10": imp_q["HR@10"]},
        **{"implicit_NDCG@10": imp_q["NDCG@10"]},
      )
    rows[solver] = row
  print(
    f"{'solver':9s} {'ours cold s':>11s} {'ours warm s':>11s} "
    f"{'implicit s':>10s} {'ours MFU':>8s} {'impl MFU':>8s} "
    f"{'ours HR@10':>10s} {'impl HR@10':>10s} {'x cold':>7s} {'x warm':>7s}"
  )
  for solver, r in rows.items():
    if "implicit_s" not in r:
      print(
        f"{solver:9s} {r['ours_cold_s']:11.2f} {r['ours_warm_s']:11.2f} "
        f"{'-':>10s} {r['ours_mfu']:8.1%} {'-':>8s} {r['ours_HR@10']:10.4f}"
      )
      continue
    print(
      f"{solver:9s} {r['ours_cold_s']:11.2f} {r['ours_warm_s']:11.2f} "
      f"{r['implicit_s']:10.2f} {r['ours_mfu']:8.1%} "
      f"{r['implicit_mfu']:8.1%} {r['ours_HR@10']:10.4f} "
      f"{r['implicit_HR@10']:10.4f} {r['speedup_cold']:7.2f} "
      f"{r['speedup_warm']:7.2f}"
    )
  if _IMPLICIT.value and len(rows) > 1:
    best_ours = min(r["ours_warm_s"] for r in rows.values())
    best_theirs = min(r["implicit_s"] for r in rows.values())
    print(
      f"fastest against fastest: ours {best_ours:.2f} s, implicit "
      f"{best_theirs:.2f} s: x {best_theirs / best_ours:.2f}"
    )
  return rows


def synthetic_interactions(rows: int, per_user: int, seed: int = 0):
  """int32[rows * per_user] users and items of a random catalogue: every user
  has ``per_user`` interactions, item i is drawn with probability proportional
  to (i + 1) ** -0.5 (a long tail without a single item in every history)."""
  rng = np.random.default_rng(seed)
  weights = np.arange(1, rows + 1, dtype=np.float64) ** -0.5
  cdf = np.cumsum(weights / weights.sum())
  users = np.repeat(np.arange(rows, dtype=np.int32), per_user)
  items = np.searchsorted(cdf, rng.random(len(users))).astype(np.int32)
  return users, np.minimum(items, rows - 1)


def _synthetic_table(mesh, peak):
  out = {}
  print(
    f"scale-out: users = items = R, {_PER_USER} interactions per user, "
    f"conjugate gradient, {_SYNTHETIC_SWEEPS} sweeps, d={_DIM.value}"
  )
  print(
    f"{'R':>9s} {'nnz':>10s} {'ours s/sweep':>12s} {'implicit s/sweep':>16s} "
    f"{'ours MFU':>8s} {'x':>6s}"
  )
  for size in (int(r) for r in _SYNTHETIC.value):
    users, items = synthetic_interactions(size, _PER_USER)
    nonzeros = _nonzeros(users, items, size)
    cfg = _config("cg", _SYNTHETIC_SWEEPS)
    cold, warm, _ = _fit_ours(users, items, size, size, cfg, mesh)
    flops = mfu.als_fit_flops(
      nonzeros, size, size, _DIM.value, _SYNTHETIC_SWEEPS, "cg", cfg.cg_steps
    )
    row = {
      "nonzeros": nonzeros,
      "ours_cold_s": cold,
      "ours_warm_s": warm,
      "ours_s_per_sweep": warm / _SYNTHETIC_SWEEPS,
      "ours_mfu": mfu.utilisation(flops, warm, peak)["mfu"],
    }
    theirs = "-"
    ratio = "-"
    if _IMPLICIT.value:
      imp_s, _, _ = _fit_implicit(
        users, items, size, size, "cg", _SYNTHETIC_SWEEPS
      )
      row["implicit_s_per_sweep"] = imp_s / _SYNTHETIC_SWEEPS
      row["speedup"] = imp_s / warm
      theirs = f"{row['implicit_s_per_sweep']:.3f}"
      ratio = f"{row['speedup']:.2f}"
    out[str(size)] = row
    print(
      f"{size:9d} {nonzeros:10d} {row['ours_s_per_sweep']:12.3f} "
      f"{theirs:>16s} {row['ours_mfu']:8.1%} {ratio:>6s}"
    )
  return out


def main(argv):
  console.quiet_by_default()
  del argv
  if _THREADS.value != _PINNED:
    raise app.UsageError("--threads must be given as --threads=N")
  devices = jax.devices()
  # Chunks of rows split over every device: one per thread on CPU.
  mesh = make_mesh((len(devices), 1, 1))
  peak = mfu.measure_matmul_peak(mesh=mesh)
  print(
    f"threads: ours {len(devices)} x {devices[0].platform} device(s), one "
    f"XLA thread each (cg; cholesky on one device); implicit "
    f"{_THREADS.value} OpenMP threads; cpu_count "
    f"{os.cpu_count()}; matmul peak {peak.gflops:.1f} GFLOP/s (float32, "
    f"n={peak.size} on every device at once, same run)"
  )
  result = {
    "dim": _DIM.value,
    "reg": _REG.value,
    "alpha": _ALPHA.value,
    "threads": _THREADS.value,
    "devices": [str(d) for d in devices],
    "matmul_peak_gflops": peak.gflops,
  }
  if not _SYNTHETIC_ONLY.value:
    result.update(
      dataset=_DATASET.value,
      sweeps=_SWEEPS.value,
      results=_dataset_table(mesh, peak),
    )
  if _SYNTHETIC.value:
    result["synthetic"] = _synthetic_table(mesh, peak)
  print("x = implicit seconds / our seconds (> 1: ours is faster)")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  out = os.path.join(_WORKDIR.value, "bench_als.json")
  files.write_json(out, result)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
