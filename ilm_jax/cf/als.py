"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) in JAX.

Each sweep solves every user, then every item, in closed form:

  x_u = (Y^T Y + lambda I + Y^T (C_u - I) Y)^-1  Y^T C_u p_u,

with confidence ``c_ui = 1 + alpha * r_ui`` for the ``r_ui`` times user ``u``
consumed item ``i`` (0 elsewhere, where ``p_ui = 0`` and ``c_ui = 1``). The
``Y^T Y`` term covers all unobserved pairs at once, so a half-sweep costs
O(nnz d^2 + n d^3) and never touches the dense matrix.

Layout: each row's interactions are cut into fixed-length *segments* (a long
row spans several), and segments are processed in fixed-size chunks by
``lax.scan``; per-segment partial sums are added into their row. Every array
has one static shape, so the whole fit (all sweeps, both sides) is a single
jitted program compiled once, and padding wastes less than one segment per
row. The factor tables are laid out by rows over the mesh's data axes
(``cf_rows``) so a large catalogue is split across devices.

Two solvers: "cholesky" forms and solves each row's d x d normal equations
exactly; "cg" takes a few conjugate-gradient steps warm-started from the
previous sweep, as the ``implicit`` library does by default, which costs
O(nnz d) per step instead of O(nnz d^2).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.cf.table import CFTable
from ilm_jax.sharding import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class ALSConfig:
  """Hyper-parameters of implicit ALS.

  Attributes:
    dim: embedding width d.
    reg: L2 regularisation lambda.
    alpha: confidence slope: c = 1 + alpha * count.
    sweeps: full user+item sweeps.
    init_scale: std of the random initial factors.
    seed: PRNG seed of the initial factors.
    solver: "cholesky" (exact, closed form) or "cg" (``cg_steps`` warm-started
      conjugate-gradient steps per half-sweep).
    cg_steps: conjugate-gradient steps per row and half-sweep.
    segment_length: interactions per segment (rows are cut into segments).
    chunk_segments: segments per scan step; bounds the gathered block at
      chunk_segments * segment_length * dim floats.
  """

  dim: int = 64
  reg: float = 1.0
  alpha: float = 10.0
  sweeps: int = 15
  init_scale: float = 0.01
  seed: int = 0
  solver: str = "cholesky"
  cg_steps: int = 3
  segment_length: int = 16
  chunk_segments: int = 2048

  def __post_init__(self):
    if self.solver not in ("cholesky", "cg"):
      raise ValueError(
        f"solver must be 'cholesky' or 'cg', not {self.solver!r}"
      )
    if self.dim < 1 or self.sweeps < 0 or self.reg < 0 or self.alpha < 0:
      raise ValueError(f"invalid ALS config {self}")


@dataclasses.dataclass(frozen=True)
class Segments:
  """One side's interactions, cut into fixed-shape segments.

  Attributes:
    rows: int32[T, C] row of each segment (padding: ``num_rows``, a sink).
    cols: int32[T, C, L] interacted columns (padding: column 0).
    counts: float32[T, C, L] interaction counts r_ui (padding: 0).
    num_rows: rows on this side.
  """

  rows: np.ndarray
  cols: np.ndarray
  counts: np.ndarray
  num_rows: int


def make_segments(
  rows: np.ndarray,
  cols: np.ndarray,
  num_rows: int,
  num_cols: int,
  segment_length: int,
  chunk_segments: int,
) -> Segments:
  """Aggregates repeated (row, col) pairs into counts and cuts rows up.

  Args:
    rows: int[N] row index of each interaction.
    cols: int[N] column index of each interaction.
    num_rows: R.
    num_cols: number of columns.
    segment_length: L.
    chunk_segments: C; the number of segments is padded to a multiple of C.
  """
  keys = np.unique(rows.astype(np.int64) * num_cols + cols, return_counts=True)
  r, c = keys[0] // num_cols, keys[0] % num_cols
  counts = keys[1].astype(np.float32)
  row_start = np.searchsorted(r, np.arange(num_rows + 1))
  lengths = np.diff(row_start)
  segs_per_row = -(-lengths // segment_length)  # ceil
  num_segments = int(segs_per_row.sum())
  total = max(1, -(-num_segments // chunk_segments)) * chunk_segments
  seg_row = np.full(total, num_rows, dtype=np.int32)
  seg_row[:num_segments] = np.repeat(np.arange(num_rows), segs_per_row)
  # Position of every interaction inside its row -> (segment, slot).
  pos_in_row = np.arange(len(r)) - row_start[r]
  first_seg = np.concatenate([[0], np.cumsum(segs_per_row)[:-1]])
  seg = first_seg[r] + pos_in_row // segment_length
  slot = pos_in_row % segment_length
  seg_cols = np.zeros((total, segment_length), dtype=np.int32)
  seg_counts = np.zeros((total, segment_length), dtype=np.float32)
  seg_cols[seg, slot] = c
  seg_counts[seg, slot] = counts
  shape = (total // chunk_segments, chunk_segments)
  return Segments(
    seg_row.reshape(shape),
    seg_cols.reshape(*shape, segment_length),
    seg_counts.reshape(*shape, segment_length),
    num_rows,
  )


def _scan_rows(fn, segs: Segments, out_init):
  """Sums ``fn(rows, cols, counts)`` per chunk into rows of ``out_init``."""

  def body(acc, chunk):
    rows, cols, counts = chunk
    return jax.tree.map(
      lambda a, part: a.at[rows].add(part), acc, fn(rows, cols, counts)
    ), None

  acc, _ = jax.lax.scan(body, out_init, (segs.rows, segs.cols, segs.counts))
  return acc


def _solve_cholesky(current, fixed, segs: Segments, cfg: ALSConfig):
  """Exact solution for every row of one side. current: float32[R, d]."""
  del current
  d = fixed.shape[1]
  gram = fixed.T @ fixed + cfg.reg * jnp.eye(d, dtype=fixed.dtype)

  def partial_sums(rows, cols, counts):
    y = fixed[cols]  # [C, L, d]
    extra = cfg.alpha * counts  # c_ui - 1, zero on padding
    observed = (counts > 0).astype(y.dtype)
    a = jnp.einsum("cld,cle->cde", y * extra[..., None], y)
    b = jnp.einsum("cl,cld->cd", (1.0 + extra) * observed, y)
    return a, b

  r = segs.num_rows + 1  # + sink row for padding segments
  zeros = (jnp.zeros((r, d, d), fixed.dtype), jnp.zeros((r, d), fixed.dtype))
  a, b = _scan_rows(partial_sums, segs, zeros)
  chol = jnp.linalg.cholesky(a[:-1] + gram)
  return jax.scipy.linalg.cho_solve((chol, True), b[:-1, :, None])[..., 0]


def _solve_cg(current, fixed, segs: Segments, cfg: ALSConfig):
  """Warm-started conjugate gradient for every row of one side."""
  d = fixed.shape[1]
  gram = fixed.T @ fixed + cfg.reg * jnp.eye(d, dtype=fixed.dtype)
  sink = jnp.zeros((1, d), fixed.dtype)

  def rows_times(p, with_rhs):
    """Y^T (C_u - I) Y p_u per row (and Y^T C_u p_u when with_rhs)."""
    p_ext = jnp.concatenate([p, sink])

    def partial_sums(rows, cols, counts):
      y = fixed[cols]
      extra = cfg.alpha * counts
      y_dot_p = jnp.einsum("cld,cd->cl", y, p_ext[rows])
      ap = jnp.einsum("cl,cld->cd", extra * y_dot_p, y)
      if not with_rhs:
        return (ap,)
      observed = (counts > 0).astype(y.dtype)
      b = jnp.einsum("cl,cld->cd", (1.0 + extra) * observed, y)
      return ap, b

    init = (jnp.zeros_like(p_ext),) * (2 if with_rhs else 1)
    return [t[:-1] for t in _scan_rows(partial_sums, segs, init)]

  x = current
  ax, b = rows_times(x, with_rhs=True)
  r = b - (x @ gram + ax)
  p = r
  rs = jnp.sum(r * r, axis=-1, keepdims=True)
  tiny = jnp.finfo(x.dtype).tiny
  for _ in range(cfg.cg_steps):
    (ap,) = rows_times(p, with_rhs=False)
    ap = ap + p @ gram
    step = rs / jnp.maximum(jnp.sum(p * ap, axis=-1, keepdims=True), tiny)
    x = x + step * p
    r = r - step * ap
    rs_new = jnp.sum(r * r, axis=-1, keepdims=True)
    p = r + (rs_new / jnp.maximum(rs, tiny)) * p
    rs = rs_new
  return x


# The progress hook of the fit in flight: the jitted loop reports each sweep
# through a host callback, which cannot take a Python callable as an argument.
_progress_hook = None


def _report_sweep(sweep):
  if _progress_hook is not None:
    _progress_hook(int(sweep) + 1)


@functools.partial(jax.jit, static_argnames=("cfg", "num_users", "num_items"))
def _fit(x, y, user_segs, item_segs, *, cfg, num_users, num_items):
  """All sweeps as one program. x: float32[U, d], y: float32[I, d]."""
  solve = _solve_cholesky if cfg.solver == "cholesky" else _solve_cg
  users = Segments(*user_segs, num_users)
  items = Segments(*item_segs, num_items)

  def sweep(i, xy):
    x, y = xy
    x = solve(x, y, users, cfg)
    y = solve(y, x, items, cfg)
    jax.debug.callback(_report_sweep, i, ordered=False)
    return x, y

  return jax.lax.fori_loop(0, cfg.sweeps, sweep, (x, y))


def _row_shards(sharding: jax.sharding.NamedSharding) -> int:
  """How many pieces a NamedSharding cuts the leading (row) axis into."""
  axes = sharding.spec[0] if len(sharding.spec) else None
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def _initial_factors(config: ALSConfig, side: int, rows, num_rows):
  """float32[num_rows, d] small random factors; zero for rows that have no
  interactions (their exact solution), so every solver keeps them at zero
  and they add nothing to the other side's Gram matrix."""
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), side)
  init = config.init_scale * jax.random.normal(
    key, (num_rows, config.dim), jnp.float32
  )
  active = np.bincount(rows, minlength=num_rows) > 0
  return init * jnp.asarray(active, jnp.float32)[:, None]


def train_als(
  users: np.ndarray,
  items: np.ndarray,
  num_users: int,
  num_items: int,
  config: ALSConfig = ALSConfig(),
  mesh: jax.sharding.Mesh | None = None,
  progress=None,
) -> tuple[CFTable, dict]:
  """Fits implicit ALS to training interactions.

  Args:
    users: int32[N] user index of each training interaction.
    items: int32[N] item index of each training interaction.
    num_users: U (users without interactions get zero vectors).
    num_items: I.
    config: hyper-parameters.
    mesh: optional mesh; factor tables are sharded by rows over it.
    progress: optional callable(sweeps_done, seconds), called after each
      sweep.

  Returns:
    (the CF table, {"seconds": wall time of the fit incl. compilation}).
  """
  users = np.asarray(users, dtype=np.int64)
  items = np.asarray(items, dtype=np.int64)
  if len(users) != len(items) or not len(users):
    raise ValueError("ALS needs equally long, non-empty user and item arrays")
  if users.min() < 0 or users.max() >= num_users:
    raise ValueError(f"user index out of range [0, {num_users})")
  if items.min() < 0 or items.max() >= num_items:
    raise ValueError(f"item index out of range [0, {num_items})")
  start = time.perf_counter()
  rows_sharding = None
  multiple = 1
  if mesh is not None:
    rows_sharding = mesh_lib.logical_to_sharding(("cf_rows", "cf_dim"), mesh)
    multiple = _row_shards(rows_sharding)
  # Pad both tables to a multiple of the row shards; padding rows have no
  # interactions, stay exactly zero and are cut off at the end.
  padded_users = -(-num_users // multiple) * multiple
  padded_items = -(-num_items // multiple) * multiple
  seg_args = (config.segment_length, config.chunk_segments)
  user_segs = make_segments(users, items, padded_users, padded_items, *seg_args)
  item_segs = make_segments(items, users, padded_items, padded_users, *seg_args)
  x = _initial_factors(config, 0, users, padded_users)
  y = _initial_factors(config, 1, items, padded_items)
  if rows_sharding is not None:
    x = jax.device_put(x, rows_sharding)
    y = jax.device_put(y, rows_sharding)
  global _progress_hook
  if progress is not None:
    _progress_hook = lambda done: progress(done, time.perf_counter() - start)
  try:
    x, y = _fit(
      x,
      y,
      (user_segs.rows, user_segs.cols, user_segs.counts),
      (item_segs.rows, item_segs.cols, item_segs.counts),
      cfg=config,
      num_users=padded_users,
      num_items=padded_items,
    )
    table = np.concatenate(
      [np.asarray(x)[:num_users], np.asarray(y)[:num_items]], axis=0
    )
  finally:
    _progress_hook = None
  seconds = time.perf_counter() - start
  if not np.isfinite(table).all():
    raise FloatingPointError(
      "ALS produced non-finite factors; raise `reg` or lower `alpha`"
    )
  return CFTable(table, num_users, num_items), {"seconds": seconds}
