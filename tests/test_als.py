"""Implicit ALS: exact recovery of planted structure, sharding, solvers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.cf.als import (
  ALSConfig,
  RowChunks,
  _solve_side,
  make_row_chunks,
  train_als,
)
from ilm_jax.sharding.mesh import make_mesh


def _planted_blocks(num_users=48, num_items=40, groups=4, seed=0):
  """Users in group g consumed every item of group g: a rank-`groups` matrix."""
  rng = np.random.default_rng(seed)
  ug = rng.integers(0, groups, num_users)
  ig = np.arange(num_items) % groups
  dense = (ug[:, None] == ig[None, :]).astype(np.float32)
  users, items = np.nonzero(dense)
  return users, items, dense


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_als_recovers_planted_low_rank_matrix(alpha):
  users, items, dense = _planted_blocks()
  cfg = ALSConfig(dim=4, reg=1e-4, alpha=alpha, sweeps=30, init_scale=0.3)
  table, _ = train_als(users, items, *dense.shape, cfg)
  recon = table.users @ table.items.T
  np.testing.assert_allclose(recon, dense, atol=2e-3)


def test_als_ranks_held_out_positives_above_negatives():
  rng = np.random.default_rng(1)
  u_true = rng.normal(size=(200, 3))
  v_true = rng.normal(size=(150, 3))
  affinity = u_true @ v_true.T
  dense = affinity > np.quantile(affinity, 0.8)
  users, items = np.nonzero(dense)
  held = rng.random(len(users)) < 0.1
  table, _ = train_als(
    users[~held],
    items[~held],
    *dense.shape,
    ALSConfig(dim=8, reg=0.1, alpha=5.0, sweeps=10),
  )
  scores = table.users @ table.items.T
  pos = scores[users[held], items[held]]
  neg = scores[~dense]
  auc = (pos[:, None] > rng.choice(neg, 2000)[None, :]).mean()
  assert auc > 0.9, auc


def test_cg_solver_approaches_exact_solver():
  users, items, dense = _planted_blocks(seed=3)
  exact, _ = train_als(users, items, *dense.shape, ALSConfig(dim=8, sweeps=8))
  cg, _ = train_als(
    users,
    items,
    *dense.shape,
    ALSConfig(dim=8, sweeps=8, solver="cg", cg_steps=8),
  )
  a = exact.users @ exact.items.T
  b = cg.users @ cg.items.T
  np.testing.assert_allclose(a, b, atol=0.05)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_users_without_interactions_get_zero_vectors(solver):
  table, _ = train_als(
    np.array([0, 0, 2]),
    np.array([1, 2, 0]),
    4,
    3,
    ALSConfig(dim=2, sweeps=2, solver=solver),
  )
  np.testing.assert_array_equal(table.users[[1, 3]], 0.0)


def test_row_counts_that_do_not_divide_the_mesh():
  """Tables padded to the row shards (the conjugate gradient is split over a
  CPU mesh; the exact solver keeps to one device there)."""
  rng = np.random.default_rng(4)
  users, items = rng.integers(0, 61, 500), rng.integers(0, 37, 500)
  cfg = ALSConfig(dim=4, sweeps=2, solver="cg")
  single, _ = train_als(users, items, 61, 37, cfg)
  sharded, _ = train_als(users, items, 61, 37, cfg, mesh=make_mesh((8, 1, 1)))
  assert sharded.embeddings.shape == (61 + 37, 4)
  np.testing.assert_allclose(
    single.embeddings, sharded.embeddings, rtol=1e-4, atol=1e-5
  )


def test_bad_indices_are_reported():
  with pytest.raises(ValueError, match="item index out of range"):
    train_als(np.array([0]), np.array([5]), 1, 3, ALSConfig(dim=2))
  with pytest.raises(ValueError, match="solver"):
    ALSConfig(solver="svd")


def _random_interactions(num_rows, num_cols, n, seed):
  rng = np.random.default_rng(seed)
  # Skewed row lengths, repeats and empty rows, as real data has.
  rows = np.minimum(rng.zipf(1.5, n) - 1, num_rows - 1)
  cols = rng.integers(0, num_cols, n)
  return rows, cols


@pytest.mark.parametrize("multiple", [1, 4])
def test_row_chunks_hold_every_row_whole_in_one_chunk(multiple):
  rows, cols = _random_interactions(30, 50, 700, seed=5)
  chunks = make_row_chunks(rows, cols, 30, 50, 4, 3, chunk_multiple=multiple)
  num_chunks, width = chunks.segment_row.shape
  assert chunks.rows.shape[0] == num_chunks
  assert chunks.rows.shape[1] <= width
  assert num_chunks % multiple == 0
  # Width grows to the longest row's segment count.
  longest = max(len(set(cols[rows == r])) for r in range(30))
  assert width == max(3, -(-longest // 4))
  active = sorted(set(rows.tolist()))
  placed = chunks.rows[chunks.rows < 30]
  assert sorted(placed.tolist()) == active  # each active row exactly once
  for k in range(num_chunks):
    slots = chunks.segment_row[k]
    assert (np.diff(slots) >= 0).all()
    for slot, row in enumerate(chunks.rows[k]):
      mine = slots == slot
      got = chunks.cols[k][mine][chunks.counts[k][mine] > 0]
      counts = chunks.counts[k][mine][chunks.counts[k][mine] > 0]
      if row == 30:
        assert got.size == 0
        continue
      want_cols, want_counts = np.unique(cols[rows == row], return_counts=True)
      np.testing.assert_array_equal(np.sort(got), want_cols)
      np.testing.assert_array_equal(counts[np.argsort(got)], want_counts)


def test_row_slots_follow_the_rows_a_chunk_holds():
  """Rows of ten segments: a chunk of 64 segments holds six of them, so it
  gets a few row slots, not 64 (each slot costs the exact solver a d x d
  factorisation)."""
  rows = np.repeat(np.arange(1000), 40)
  cols = np.tile(np.arange(40), 1000)
  chunks = make_row_chunks(rows, cols, 1000, 40, 4, 64)
  assert chunks.segment_row.shape[1] == 64
  assert chunks.rows.size < 1.5 * 1000
  assert sorted(chunks.rows[chunks.rows < 1000].tolist()) == list(range(1000))


def _normal_equations(fixed, rows, cols, num_rows, cfg):
  """Per row, in float64: (A = Y^T C_u Y + lambda I, b = Y^T C_u p_u, whether
  the row has interactions), straight from the dense count matrix."""
  dense = np.zeros((num_rows, fixed.shape[0]))
  np.add.at(dense, (rows, cols), 1.0)
  gram = fixed.T.astype(np.float64) @ fixed + cfg.reg * np.eye(fixed.shape[1])
  for counts in dense:
    a = gram + fixed.T @ (cfg.alpha * counts[:, None] * fixed)
    b = fixed.T @ ((1 + cfg.alpha * counts) * (counts > 0))
    yield a, b, counts.any()


def test_chunk_local_cg_equals_per_row_conjugate_gradient():
  """One half-sweep of the solver against a plain per-row CG in numpy."""
  rows, cols = _random_interactions(40, 25, 600, seed=6)
  cfg = ALSConfig(dim=5, reg=0.5, alpha=3.0, solver="cg", cg_steps=3)
  rng = np.random.default_rng(7)
  fixed = rng.normal(size=(25, 5)).astype(np.float32)
  current = rng.normal(size=(40, 5)).astype(np.float32)
  chunks = make_row_chunks(rows, cols, 40, 25, 4, 2)
  got = np.asarray(
    _solve_side(jnp.asarray(current), jnp.asarray(fixed), chunks, cfg)
  )
  for u, (a, b, observed) in enumerate(
    _normal_equations(fixed, rows, cols, 40, cfg)
  ):
    x = current[u].astype(np.float64)
    if not observed:  # a row without interactions is solved to 0
      np.testing.assert_array_equal(got[u], 0.0)
      continue
    r = b - a @ x
    p, rs = r, r @ r
    for _ in range(cfg.cg_steps):
      ap = a @ p
      step = rs / (p @ ap)
      x, r = x + step * p, r - step * ap
      p, rs = r + (r @ r) / rs * p, r @ r
    np.testing.assert_allclose(got[u], x, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("shape", [(4, 2, 1), (8, 1, 1)])
def test_sharded_cg_equals_single_device(shape):
  rng = np.random.default_rng(8)
  users, items = rng.integers(0, 61, 900), rng.integers(0, 37, 900)
  cfg = ALSConfig(dim=8, sweeps=3, solver="cg", cg_chunk_segments=4)
  single, _ = train_als(users, items, 61, 37, cfg)
  sharded, _ = train_als(users, items, 61, 37, cfg, mesh=make_mesh(shape))
  np.testing.assert_allclose(
    single.embeddings, sharded.embeddings, rtol=1e-4, atol=1e-5
  )


def _half_sweep_inputs(num_rows, num_cols, dim, seed):
  rows, cols = _random_interactions(num_rows, num_cols, 12 * num_rows, seed)
  rng = np.random.default_rng(seed)
  fixed = rng.normal(size=(num_cols, dim)).astype(np.float32)
  return rows, cols, fixed


def test_chunk_local_exact_solver_equals_per_row_normal_equations():
  rows, cols, fixed = _half_sweep_inputs(40, 25, 5, seed=9)
  cfg = ALSConfig(dim=5, reg=0.5, alpha=3.0)
  chunks = make_row_chunks(rows, cols, 40, 25, 4, 2)
  got = np.asarray(
    _solve_side(jnp.zeros((40, 5)), jnp.asarray(fixed), chunks, cfg)
  )
  for u, (a, b, _) in enumerate(_normal_equations(fixed, rows, cols, 40, cfg)):
    np.testing.assert_allclose(got[u], np.linalg.solve(a, b), atol=1e-4)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_chunks_split_over_devices_solve_like_one_device(solver):
  """The shard_map split itself, for both solvers (train_als keeps the exact
  solver on one device of a CPU mesh, so this is where its split runs)."""
  rows, cols, fixed = _half_sweep_inputs(64, 30, 8, seed=10)
  fixed = jnp.asarray(fixed)
  cfg = ALSConfig(dim=8, solver=solver, chunk_segments=4, cg_chunk_segments=4)
  length = cfg.segment_length if solver == "cholesky" else cfg.cg_segment_length
  current = jnp.asarray(np.random.default_rng(11).normal(size=(64, 8)))
  current = current.astype(jnp.float32)
  mesh = make_mesh((4, 2, 1))
  single = _solve_side(
    current, fixed, make_row_chunks(rows, cols, 64, 30, length, 4), cfg
  )
  split = make_row_chunks(rows, cols, 64, 30, length, 4, chunk_multiple=8)
  sharded = jax.jit(
    lambda arrays: _solve_side(
      current, fixed, RowChunks(*arrays, 64), cfg, mesh=mesh
    )
  )(split.arrays())
  np.testing.assert_allclose(single, sharded, rtol=1e-4, atol=1e-5)


def test_exact_solver_on_a_cpu_mesh_finishes_at_full_width():
  """d = 64 on 8 CPU devices: split over them, XLA:CPU's fit never returned
  (the split itself: test_chunks_split_over_devices_solve_like_one_device)."""
  rng = np.random.default_rng(12)
  users, items = rng.integers(0, 64, 800), rng.integers(0, 56, 800)
  cfg = ALSConfig(dim=64, sweeps=2)
  single, _ = train_als(users, items, 64, 56, cfg)
  sharded, _ = train_als(users, items, 64, 56, cfg, mesh=make_mesh((8, 1, 1)))
  np.testing.assert_array_equal(single.embeddings, sharded.embeddings)
