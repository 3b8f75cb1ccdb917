"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) in JAX.

Each sweep solves every user, then every item, in closed form:

  x_u = (Y^T Y + lambda I + Y^T (C_u - I) Y)^-1  Y^T C_u p_u,

with confidence ``c_ui = 1 + alpha * r_ui`` for the ``r_ui`` times user ``u``
consumed item ``i`` (0 elsewhere, where ``p_ui = 0`` and ``c_ui = 1``). The
``Y^T Y`` term covers all unobserved pairs at once, so a half-sweep costs
O(nnz d^2 + n d^3) and never touches the dense matrix.

Rows are solved in fixed-shape blocks: rows with similar interaction counts are
padded to the same power-of-two length, so jit compiles a handful of shapes and
padding wastes at most half of each block. The factor tables are laid out by
rows over the mesh's data axes (``cf_rows``), so a catalogue of millions of
items is split across devices; XLA gathers the rows a block needs.
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

MIN_BLOCK_LENGTH = 8


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
    solver: "cholesky" solves each row's normal equations exactly (closed
      form); "cg" takes ``cg_steps`` conjugate-gradient steps warm-started
      from the previous sweep (as the ``implicit`` library does by default),
      O(nnz d) instead of O(nnz d^2) per sweep.
    cg_steps: conjugate-gradient steps per row and half-sweep.
    block_entries: padded interactions per solve block (rows x length);
      bounds the gathered block at block_entries * dim floats.
  """

  dim: int = 64
  reg: float = 0.1
  alpha: float = 10.0
  sweeps: int = 15
  init_scale: float = 0.01
  seed: int = 0
  solver: str = "cholesky"
  cg_steps: int = 3
  block_entries: int = 1 << 16

  def __post_init__(self):
    if self.solver not in ("cholesky", "cg"):
      raise ValueError(
        f"solver must be 'cholesky' or 'cg', not {self.solver!r}"
      )
    if self.dim < 1 or self.sweeps < 0 or self.reg < 0 or self.alpha < 0:
      raise ValueError(f"invalid ALS config {self}")


@dataclasses.dataclass(frozen=True)
class _Blocks:
  """Rows grouped into fixed-shape blocks for one side of the matrix.

  Each entry of ``blocks`` is (rows int32[B], cols int32[B, L], counts
  float32[B, L]); padding has col 0 and count 0; padded rows repeat row index
  ``num_rows`` (dropped when written back).
  """

  num_rows: int
  blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
  empty_rows: np.ndarray  # rows without interactions: their solution is 0


def _group_rows(rows, cols, num_rows, block_entries) -> _Blocks:
  """Groups the (row, col) interactions by row into padded blocks."""
  # Aggregate repeats: r_ui is a count.
  keys = rows.astype(np.int64) * (cols.max() + 1 if len(cols) else 1) + cols
  uniq, counts = np.unique(keys, return_counts=True)
  ncols = cols.max() + 1 if len(cols) else 1
  r, c = uniq // ncols, uniq % ncols
  bounds = np.searchsorted(r, np.arange(num_rows + 1))
  lengths = np.diff(bounds)
  bucket = np.maximum(
    MIN_BLOCK_LENGTH, 2 ** np.ceil(np.log2(np.maximum(lengths, 1)))
  ).astype(np.int64)
  blocks = []
  for length in np.unique(bucket[lengths > 0]):
    members = np.flatnonzero((bucket == length) & (lengths > 0))
    per_block = max(1, block_entries // int(length))
    for start in range(0, len(members), per_block):
      chunk = members[start : start + per_block]
      rows_out = np.full(per_block, num_rows, dtype=np.int32)
      rows_out[: len(chunk)] = chunk
      col_mat = np.zeros((per_block, length), dtype=np.int32)
      cnt_mat = np.zeros((per_block, length), dtype=np.float32)
      for j, row in enumerate(chunk):
        lo, hi = bounds[row], bounds[row + 1]
        col_mat[j, : hi - lo] = c[lo:hi]
        cnt_mat[j, : hi - lo] = counts[lo:hi]
      blocks.append((rows_out, col_mat, cnt_mat))
  return _Blocks(num_rows, blocks, np.flatnonzero(lengths == 0))


def _normal_equations(fixed, cols, counts, alpha):
  """Gathered factors and right-hand side of one block's normal equations.

  Returns:
    (y float32[B, L, d], c_minus_1 float32[B, L], b float32[B, d]) with
    ``b = Y_u^T C_u p_u``; padding entries have zero weight.
  """
  y = fixed[cols]
  extra = alpha * counts  # c_ui - 1, zero on padding
  observed = (counts > 0).astype(y.dtype)
  b = jnp.einsum("bl,bld->bd", (1.0 + extra) * observed, y)
  return y, extra, b


@functools.partial(jax.jit, static_argnames=("alpha",), donate_argnums=0)
def _cholesky_block(out, fixed, gram, rows, cols, counts, *, alpha):
  """Exact solve of one block of rows, written into ``out``.

  Args:
    out: float32[R + 1, d] the factors being solved (last row: padding sink).
    fixed: float32[M, d], the other side's factors.
    gram: float32[d, d], ``fixed^T fixed + reg I``.
    rows: int32[B] rows of the block (padding: R).
    cols: int32[B, L] interacted columns (padding: any column, count 0).
    counts: float32[B, L] interaction counts r_ui (0 on padding).
    alpha: confidence slope.

  Returns:
    ``out`` with the block's rows replaced.
  """
  y, extra, b = _normal_equations(fixed, cols, counts, alpha)
  a = gram + jnp.einsum("bld,ble->bde", y * extra[..., None], y)
  chol = jnp.linalg.cholesky(a)
  x = jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]
  return out.at[rows].set(x)


@functools.partial(
  jax.jit, static_argnames=("alpha", "steps"), donate_argnums=0
)
def _cg_block(out, fixed, gram, rows, cols, counts, *, alpha, steps):
  """A few conjugate-gradient steps from the current factors (warm start).

  Same arguments as ``_cholesky_block``; never forms the d x d matrices, so
  a step costs O(L d) per row instead of O(L d^2).
  """
  y, extra, b = _normal_equations(fixed, cols, counts, alpha)

  def matvec(p):
    weighted = extra * jnp.einsum("bld,bd->bl", y, p)
    return p @ gram + jnp.einsum("bl,bld->bd", weighted, y)

  x = out[rows]
  r = b - matvec(x)
  p = r
  rs = jnp.sum(r * r, axis=-1, keepdims=True)
  tiny = jnp.finfo(x.dtype).tiny
  for _ in range(steps):
    ap = matvec(p)
    step = rs / jnp.maximum(jnp.sum(p * ap, axis=-1, keepdims=True), tiny)
    x = x + step * p
    r = r - step * ap
    rs_new = jnp.sum(r * r, axis=-1, keepdims=True)
    p = r + (rs_new / jnp.maximum(rs, tiny)) * p
    rs = rs_new
  return out.at[rows].set(x)


@jax.jit
def _gram(fixed, reg):
  d = fixed.shape[1]
  return fixed.T @ fixed + reg * jnp.eye(d, dtype=fixed.dtype)


def _half_sweep(current, fixed, blocks: _Blocks, cfg: ALSConfig):
  """Solves every row of one side given the other side's factors."""
  gram = _gram(fixed, cfg.reg)
  # One extra last row absorbs the writes of padded block rows.
  pad = jnp.zeros((1, cfg.dim), current.dtype)
  out = jnp.concatenate([current, pad], axis=0).at[blocks.empty_rows].set(0.0)
  for rows, cols, counts in blocks.blocks:
    if cfg.solver == "cholesky":
      out = _cholesky_block(
        out, fixed, gram, rows, cols, counts, alpha=cfg.alpha
      )
    else:
      out = _cg_block(
        out, fixed, gram, rows, cols, counts, alpha=cfg.alpha,
        steps=cfg.cg_steps,
      )  # fmt: skip
  return out[: blocks.num_rows]


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
    progress: optional callable(sweep, seconds) called after every sweep.

  Returns:
    (the CF table, {"seconds": wall time of the sweeps, "compile_seconds"...}).
  """
  users = np.asarray(users, dtype=np.int64)
  items = np.asarray(items, dtype=np.int64)
  if len(users) != len(items) or not len(users):
    raise ValueError("ALS needs equally long, non-empty user and item arrays")
  if users.min() < 0 or users.max() >= num_users:
    raise ValueError(f"user index out of range [0, {num_users})")
  if items.min() < 0 or items.max() >= num_items:
    raise ValueError(f"item index out of range [0, {num_items})")
  order = np.lexsort((items, users))
  user_blocks = _group_rows(
    users[order], items[order], num_users, config.block_entries
  )
  order = np.lexsort((users, items))
  item_blocks = _group_rows(
    items[order], users[order], num_items, config.block_entries
  )
  key_u, key_i = jax.random.split(jax.random.PRNGKey(config.seed))
  shape_u, shape_i = (num_users, config.dim), (num_items, config.dim)
  x = config.init_scale * jax.random.normal(key_u, shape_u, jnp.float32)
  y = config.init_scale * jax.random.normal(key_i, shape_i, jnp.float32)
  if mesh is not None:
    rows = mesh_lib.logical_to_sharding(("cf_rows", "cf_dim"), mesh)
    x, y = jax.device_put(x, rows), jax.device_put(y, rows)
  start = time.perf_counter()
  for sweep in range(config.sweeps):
    x = _half_sweep(x, y, user_blocks, config)
    y = _half_sweep(y, x, item_blocks, config)
    jax.block_until_ready(y)
    if progress is not None:
      progress(sweep, time.perf_counter() - start)
  seconds = time.perf_counter() - start
  table = np.concatenate([np.asarray(x), np.asarray(y)], axis=0)
  if not np.isfinite(table).all():
    raise FloatingPointError(
      "ALS produced non-finite factors; raise `reg` or lower `alpha`"
    )
  return CFTable(table, num_users, num_items), {"seconds": seconds}
