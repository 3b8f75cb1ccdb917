"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) in JAX.

Each sweep solves every user, then every item, in closed form:

  x_u = (Y^T Y + lambda I + Y^T (C_u - I) Y)^-1  Y^T C_u p_u,

with confidence ``c_ui = 1 + alpha * r_ui`` for the ``r_ui`` times user ``u``
consumed item ``i`` (0 elsewhere, where ``p_ui = 0`` and ``c_ui = 1``). The
``Y^T Y`` term covers all unobserved pairs at once, so a half-sweep costs
O(nnz d^2 + n d^3) and never touches the dense matrix.

Layout: each row's interactions are cut into fixed-length *segments* (a long
row spans several) and rows are packed whole into fixed-size *chunks* (no row
spans two), processed one after another by ``lax.map``. Every array has one
static shape, so the whole fit (all sweeps, both sides) is a single jitted
program compiled once, and padding wastes less than one segment per row and
one row per chunk. A chunk gathers its rows' partner vectors once and
everything its rows' solves need is then local, so chunks are independent:
with a mesh they are split over the devices of the ``cf_rows`` axes
(``shard_map``), each device solving its own rows against a replicated copy of
the other side's table, and a catalogue of 10^6 rows never materialises more
than one chunk's block per device.

Two solvers: "cholesky" forms and solves each row's d x d normal equations
exactly; "cg" takes a few conjugate-gradient steps warm-started from the
previous sweep, as the ``implicit`` library does by default, which costs
O(nnz d) per step instead of O(nnz d^2), all of them on the chunk's gathered
vectors while they are still in cache.
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
    cg_segment_length: the same for the conjugate-gradient solver, whose
      chunks hold whole rows and stay in cache for all of its steps.
    cg_chunk_segments: segments per chunk of the conjugate-gradient solver
      (raised to the longest row's segment count when that is larger).
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
  # Measured on ML-1M (d = 64, 2 CPU devices): 64 x 32 ran ~15% faster than
  # 32 x 64 and than the other shapes tried (launch/bench_als.py).
  cg_segment_length: int = 64
  cg_chunk_segments: int = 32

  def __post_init__(self):
    if self.solver not in ("cholesky", "cg"):
      raise ValueError(
        f"solver must be 'cholesky' or 'cg', not {self.solver!r}"
      )
    if self.dim < 1 or self.sweeps < 0 or self.reg < 0 or self.alpha < 0:
      raise ValueError(f"invalid ALS config {self}")
    sizes = (
      self.segment_length,
      self.chunk_segments,
      self.cg_segment_length,
      self.cg_chunk_segments,
    )
    if min(sizes) < 1:
      raise ValueError(f"segment and chunk sizes must be positive: {self}")


def _row_major_pairs(rows, cols, num_rows, num_cols, segment_length):
  """Distinct (row, col) pairs sorted by row, with repeat counts.

  Returns:
    (row int64[P], col int64[P], count float32[P], row_start int64[R + 1]
    where each row's pairs begin, segments per row int64[R])
  """
  keys, repeats = np.unique(
    rows.astype(np.int64) * num_cols + cols, return_counts=True
  )
  r, c = keys // num_cols, keys % num_cols
  row_start = np.searchsorted(r, np.arange(num_rows + 1))
  segs_per_row = -(-np.diff(row_start) // segment_length)  # ceil
  return r, c, repeats.astype(np.float32), row_start, segs_per_row


@dataclasses.dataclass(frozen=True)
class RowChunks:
  """One side's interactions packed whole-row into fixed-shape chunks.

  Each chunk holds up to C segments of L interactions and up to S rows; a
  row's segments are consecutive inside one chunk, so everything a row's
  solve needs is local.

  Attributes:
    rows: int32[N, S] global row of each local row slot (padding: ``num_rows``,
      a sink that is dropped).
    segment_row: int32[N, C] local row slot of each segment, non-decreasing
      within a chunk (padding segments: S - 1, with zero counts).
    cols: int32[N, C, L] interacted columns (padding: column 0).
    counts: float32[N, C, L] interaction counts r_ui (padding: 0).
    num_rows: rows on this side.
  """

  rows: np.ndarray
  segment_row: np.ndarray
  cols: np.ndarray
  counts: np.ndarray
  num_rows: int

  def arrays(self):
    return self.rows, self.segment_row, self.cols, self.counts


def make_row_chunks(
  rows: np.ndarray,
  cols: np.ndarray,
  num_rows: int,
  num_cols: int,
  segment_length: int,
  chunk_segments: int,
  chunk_multiple: int = 1,
) -> RowChunks:
  """Aggregates repeated (row, col) pairs and packs rows whole into chunks.

  Rows are packed in order, greedily: a row that does not fit the rest of a
  chunk (its segments or its row slots) starts the next one. A chunk has
  about a quarter more row slots than the rows an average chunk holds, so
  per-row work (the exact solver's d x d factorisations) is not spent on
  empty slots, and a chunk wastes at most one row's segments.

  Args:
    rows: int[N] row index of each interaction.
    cols: int[N] column index of each interaction.
    num_rows: R.
    num_cols: number of columns.
    segment_length: L.
    chunk_segments: C; raised to the longest row's segment count.
    chunk_multiple: the number of chunks is padded to a multiple of this
      (the devices the chunks are split over).
  """
  r, c, repeats, row_start, segs_per_row = _row_major_pairs(
    rows, cols, num_rows, num_cols, segment_length
  )
  lengths = np.diff(row_start)
  width = max(chunk_segments, int(segs_per_row.max(initial=1)))
  active = np.flatnonzero(segs_per_row)
  active_segs = segs_per_row[active]
  mean_rows = width * len(active) / max(int(active_segs.sum()), 1)
  slots = min(width, max(1, int(np.ceil(1.25 * mean_rows))))
  # Greedy packing is sequential; plain Python ints keep it at ~1 s for 10^6
  # rows.
  chunk_of, first_seg, slot = [], [], []
  chunk, used, filled = 0, 0, 0
  for n in active_segs.tolist():
    if used + n > width or filled == slots:
      chunk, used, filled = chunk + 1, 0, 0
    chunk_of.append(chunk)
    first_seg.append(used)
    slot.append(filled)
    used, filled = used + n, filled + 1
  chunk_of = np.asarray(chunk_of, np.int64)
  first_seg = np.asarray(first_seg, np.int64)
  slot = np.asarray(slot, np.int64)
  num_chunks = (chunk + 1) if len(active) else 1
  num_chunks = -(-num_chunks // chunk_multiple) * chunk_multiple
  shape = (num_chunks, width)
  chunk_rows = np.full((num_chunks, slots), num_rows, dtype=np.int32)
  chunk_rows[chunk_of, slot] = active
  # Every segment of active row j: chunk_of[j], first_seg[j] + 0..n_j-1.
  seg_owner = np.repeat(np.arange(len(active)), active_segs)
  seg_index = first_seg[seg_owner] + (
    np.arange(len(seg_owner))
    - np.repeat(np.cumsum(active_segs) - active_segs, active_segs)
  )
  segment_row = np.full(shape, slots - 1, dtype=np.int32)
  segment_row[chunk_of[seg_owner], seg_index] = slot[seg_owner]
  # Every interaction: its row's active index, then (segment, position).
  owner = np.repeat(np.arange(len(active)), lengths[active])
  pos_in_row = np.arange(len(r)) - row_start[r]
  seg_cols = np.zeros((*shape, segment_length), dtype=np.int32)
  seg_counts = np.zeros((*shape, segment_length), dtype=np.float32)
  where = (
    chunk_of[owner],
    first_seg[owner] + pos_in_row // segment_length,
    pos_in_row % segment_length,
  )
  seg_cols[where] = c
  seg_counts[where] = repeats
  return RowChunks(chunk_rows, segment_row, seg_cols, seg_counts, num_rows)


def _chunk_terms(fixed, cfg: ALSConfig, chunk):
  """What every solver reads of one chunk.

  Args:
    fixed: float32[R', d] the other side's table.
    cfg: hyper-parameters.
    chunk: one chunk of a RowChunks' arrays (rows [S], segment_row [C],
      cols [C, L], counts [C, L]).

  Returns:
    (y float32[C, L, d] the gathered partner vectors, extra float32[C, L] the
    confidences minus one (zero on padding), per_row: sums float[C, ...] per
    segment into float[S, ...] per local row slot, b float32[S, d] the
    right-hand sides Y^T C_u p_u).
  """
  rows, segment_row, cols, counts = chunk
  y = fixed[cols]  # [C, L, d]: gathered once per chunk
  extra = cfg.alpha * counts  # c_ui - 1, zero on padding

  def per_row(v):
    return jax.ops.segment_sum(
      v, segment_row, num_segments=rows.shape[0], indices_are_sorted=True
    )

  observed = (counts > 0).astype(y.dtype)
  b = per_row(jnp.einsum("cl,cld->cd", (1.0 + extra) * observed, y))
  return y, extra, per_row, b


def _cholesky_chunk(fixed, gram, current, cfg: ALSConfig, chunk):
  """Exact solution for the rows of one chunk: float32[S, d] (arguments as
  ``_cg_chunk``'s; the warm start is not needed)."""
  del current
  y, extra, per_row, b = _chunk_terms(fixed, cfg, chunk)
  a = per_row(jnp.einsum("cld,cle->cde", y * extra[..., None], y)) + gram
  chol = jnp.linalg.cholesky(a)
  return jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]


def _cg_chunk(fixed, gram, current, cfg: ALSConfig, chunk):
  """Conjugate-gradient steps for the rows of one chunk.

  Args:
    fixed: float32[R', d] the other side's table.
    gram: float32[d, d] its Gram matrix plus lambda I.
    current: float32[R + 1, d] this side's table with a zero sink row (the
      warm start).
    cfg: hyper-parameters.
    chunk: one chunk of a RowChunks' arrays (rows [S], segment_row [C],
      cols [C, L], counts [C, L]).

  Returns:
    float32[S, d] the new vectors of the chunk's row slots.
  """
  rows, segment_row = chunk[:2]
  y, extra, per_row, b = _chunk_terms(fixed, cfg, chunk)

  def times_a(p):  # (Y^T Y + lambda I + Y^T (C_u - I) Y) p, per row slot
    y_dot_p = jnp.einsum("cld,cd->cl", y, p[segment_row])
    return per_row(jnp.einsum("cl,cld->cd", extra * y_dot_p, y)) + p @ gram

  x = current[rows]
  r = b - times_a(x)
  p = r
  rs = jnp.sum(r * r, axis=-1, keepdims=True)
  tiny = jnp.finfo(x.dtype).tiny
  for _ in range(cfg.cg_steps):
    ap = times_a(p)
    step = rs / jnp.maximum(jnp.sum(p * ap, axis=-1, keepdims=True), tiny)
    x = x + step * p
    r = r - step * ap
    rs_new = jnp.sum(r * r, axis=-1, keepdims=True)
    p = r + (rs_new / jnp.maximum(rs, tiny)) * p
    rs = rs_new
  return x


def _solve_side(current, fixed, chunks: RowChunks, cfg: ALSConfig, mesh=None):
  """Solves every row of one side chunk by chunk (exactly or by warm-started
  conjugate gradient, as ``cfg.solver`` says); with a mesh, each device
  solves the chunks it holds. current: float32[R, d]."""
  d = fixed.shape[1]
  gram = fixed.T @ fixed + cfg.reg * jnp.eye(d, dtype=fixed.dtype)
  current_ext = jnp.concatenate([current, jnp.zeros((1, d), current.dtype)])
  solve_chunk = _cholesky_chunk if cfg.solver == "cholesky" else _cg_chunk

  def solve_chunks(rows, segment_row, cols, counts, fixed, gram, current_ext):
    return jax.lax.map(
      functools.partial(solve_chunk, fixed, gram, current_ext, cfg),
      (rows, segment_row, cols, counts),
    )

  if mesh is not None:
    # Chunks are independent, so each device solves its own with no
    # communication (train_als keeps the exact solver off CPU meshes).
    split = jax.sharding.PartitionSpec(_row_axes(mesh))
    whole = jax.sharding.PartitionSpec()
    solve_chunks = jax.shard_map(
      solve_chunks,
      mesh=mesh,
      in_specs=(split,) * 4 + (whole,) * 3,
      out_specs=split,
    )
  solved = solve_chunks(*chunks.arrays(), fixed, gram, current_ext)
  # Every active row sits in exactly one slot; padding slots write zeros
  # into the sink row, which is dropped.
  out = (
    jnp.zeros_like(current_ext)
    .at[chunks.rows.reshape(-1)]
    .set(solved.reshape(-1, d))
  )
  return out[:-1]


# The progress hook of the fit in flight: the jitted loop reports each sweep
# through a host callback, which cannot take a Python callable as an argument.
_progress_hook = None


def _report_sweep(sweep):
  if _progress_hook is not None:
    _progress_hook(int(sweep) + 1)


@functools.partial(
  jax.jit, static_argnames=("cfg", "num_users", "num_items", "mesh")
)
def _fit(x, y, user_rows, item_rows, *, cfg, num_users, num_items, mesh):
  """All sweeps as one program. x: float32[U, d], y: float32[I, d];
  user_rows / item_rows: the arrays of each side's RowChunks."""
  users = RowChunks(*user_rows, num_users)
  items = RowChunks(*item_rows, num_items)
  solve = functools.partial(_solve_side, mesh=mesh)

  def sweep(i, xy):
    x, y = xy
    x = solve(x, y, users, cfg)
    y = solve(y, x, items, cfg)
    jax.debug.callback(_report_sweep, i, ordered=False)
    return x, y

  return jax.lax.fori_loop(0, cfg.sweeps, sweep, (x, y))


def _row_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the ``cf_rows`` rule splits rows over."""
  spec = mesh_lib.logical_to_sharding(("cf_rows",), mesh).spec
  axes = spec[0] if len(spec) else None
  if axes is None:
    return ()
  return axes if isinstance(axes, tuple) else (axes,)


def _row_shards(sharding: jax.sharding.NamedSharding) -> int:
  """How many pieces a NamedSharding cuts the leading (row) axis into."""
  axes = sharding.spec[0] if len(sharding.spec) else None
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def _stalls_beside_lapack(mesh: jax.sharding.Mesh) -> bool:
  """Whether the exact solver must not be split over this mesh.

  XLA:CPU runs each of a mesh's CPU devices on a host thread and meets them
  at every collective; beside the batched LAPACK Cholesky some devices never
  reach the rendezvous (seen with d = 64 on 8 CPU devices over 2 cores: the
  fit waits forever). CPU meshes are simulated devices sharing one memory,
  so solving there on one device loses nothing; accelerators split chunks.
  """
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


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
  exact = config.solver == "cholesky"
  if exact and mesh is not None and _stalls_beside_lapack(mesh):
    mesh = None
  rows_sharding = None
  multiple = 1
  if mesh is not None:
    rows_sharding = mesh_lib.logical_to_sharding(("cf_rows", "cf_dim"), mesh)
    multiple = _row_shards(rows_sharding)
  # Pad both tables to a multiple of the row shards; padding rows have no
  # interactions, stay exactly zero and are cut off at the end.
  padded_users = -(-num_users // multiple) * multiple
  padded_items = -(-num_items // multiple) * multiple
  pack = functools.partial(
    make_row_chunks,
    segment_length=config.segment_length if exact else config.cg_segment_length,
    chunk_segments=config.chunk_segments if exact else config.cg_chunk_segments,
    chunk_multiple=multiple,
  )
  user_rows = pack(users, items, padded_users, padded_items)
  item_rows = pack(items, users, padded_items, padded_users)
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
      user_rows.arrays(),
      item_rows.arrays(),
      cfg=config,
      num_users=padded_users,
      num_items=padded_items,
      mesh=mesh,
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
