"""Stage-1 losses against plain numpy per-example references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.models.bert import BertConfig
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives import contrastive, itc, itg, itm, mix

RNG = np.random.default_rng(0)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(row):
  row = row - row.max()
  return row - np.log(np.exp(row).sum())


def _np_info_nce(sim, temp, a_ids, b_ids):
  """Per-example symmetric InfoNCE, duplicates of the positive excluded."""
  n = sim.shape[0]
  per_example = []
  for i in range(n):
    row = [sim[i, j] / temp for j in range(n) if j == i or b_ids[j] != b_ids[i]]
    col = [sim[j, i] / temp for j in range(n) if j == i or a_ids[j] != a_ids[i]]
    pos_row = sum(1 for j in range(i) if b_ids[j] != b_ids[i])
    pos_col = sum(1 for j in range(i) if a_ids[j] != a_ids[i])
    per_example.append(
      -0.5 * _np_log_softmax(np.array(row))[pos_row]
      - 0.5 * _np_log_softmax(np.array(col))[pos_col]
    )
  return float(np.mean(per_example))


def test_max_pair_similarity_matches_loops():
  a = _unit(RNG.normal(size=(3, 2, 4)))
  b = _unit(RNG.normal(size=(5, 3, 4)))
  got = np.asarray(contrastive.max_pair_similarity(a, b))
  for i in range(3):
    for j in range(5):
      want = max(a[i, k] @ b[j, m] for k in range(2) for m in range(3))
      assert got[i, j] == pytest.approx(want, abs=1e-6)


def test_item_text_similarity_is_best_query():
  items = _unit(RNG.normal(size=(4, 3, 5)))
  texts = _unit(RNG.normal(size=(4, 5)))
  got = np.asarray(itc.item_text_similarity(items, texts))
  want = np.array([[max(q @ t for q in it) for t in texts] for it in items])
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("dups", [False, True])
def test_itc_matches_numpy(dups):
  items = _unit(RNG.normal(size=(6, 3, 5))).astype(np.float32)
  texts = _unit(RNG.normal(size=(6, 5))).astype(np.float32)
  ids = np.array([0, 1, 2, 1, 4, 5] if dups else [0, 1, 2, 3, 4, 5])
  loss, metrics, sim = itc.itc_loss(items, texts, jnp.float32(0.1), ids)
  sim_np = np.array([[max(q @ t for q in it) for t in texts] for it in items])
  assert float(loss) == pytest.approx(
    _np_info_nce(sim_np, 0.1, ids, ids), rel=1e-5
  )
  # Top-1 accuracy of both directions, other copies of a row's own id not
  # competing with it.
  same = (ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)
  masked = np.where(same, -np.inf, sim_np)
  want = 0.5 * (
    np.mean(masked.argmax(1) == np.arange(6))
    + np.mean(masked.T.argmax(1) == np.arange(6))
  )
  assert float(metrics["acc"]) == pytest.approx(want)


@pytest.mark.parametrize("dups", [False, True])
def test_ii_ui_contrastive_matches_numpy(dups):
  a = _unit(RNG.normal(size=(5, 2, 4))).astype(np.float32)
  b = _unit(RNG.normal(size=(5, 2, 4))).astype(np.float32)
  a_ids = np.array([3, 3, 7, 8, 9] if dups else [3, 4, 7, 8, 9])
  b_ids = np.array([1, 2, 1, 5, 6] if dups else [1, 2, 4, 5, 6])
  loss, _ = contrastive.entity_contrastive_loss(
    a, b, jnp.float32(0.05), a_ids, b_ids
  )
  sim = np.array([[max(x @ y for x in ai for y in bj) for bj in b] for ai in a])
  assert float(loss) == pytest.approx(
    _np_info_nce(sim, 0.05, a_ids, b_ids), rel=1e-5
  )


def test_contrastive_accuracy_is_perfect_on_identical_features():
  a = _unit(np.eye(4)[:, None, :]).astype(np.float32)
  loss, m = contrastive.entity_contrastive_loss(
    a, a, jnp.float32(0.01), np.arange(4), np.arange(4)
  )
  assert float(m["acc"]) == 1.0 and float(loss) < 1e-3


def test_itm_loss_matches_numpy():
  logits = RNG.normal(size=(9, 2)).astype(np.float32)
  labels = np.asarray(itm.itm_labels(3))
  assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
  loss, m = itm.itm_loss(logits, labels)
  want = np.mean(
    [-_np_log_softmax(row)[lab] for row, lab in zip(logits, labels)]
  )
  assert float(loss) == pytest.approx(want, rel=1e-5)
  acc = np.mean(logits.argmax(-1) == labels)
  assert float(m["acc"]) == pytest.approx(acc)


def test_hard_negatives_follow_softmax_and_skip_positives():
  sim = np.array(
    [
      [0.9, 0.5, 0.1, 0.3],
      [0.2, 0.8, 0.4, 0.0],
      [0.1, 0.3, 0.7, 0.6],
      [0.5, 0.5, 0.5, 0.5],
    ],
    np.float32,
  )
  ids = np.array([0, 1, 2, 0])  # examples 0 and 3 are the same item
  temp = jnp.float32(0.2)
  keys = jax.random.split(jax.random.key(0), 4000)
  neg_text, neg_item = jax.vmap(
    lambda k: itm.sample_hard_negatives(k, sim, temp, ids)
  )(keys)
  neg_text, neg_item = np.asarray(neg_text), np.asarray(neg_item)
  same = ids[:, None] == ids[None, :]
  for i in range(4):
    assert not same[i, neg_text[:, i]].any()
    assert not same[neg_item[:, i], i].any()
  # Row 0 may pick texts 1 or 2 with probability softmax(sim/temp).
  p = np.exp(sim[0, 1:3] / 0.2)
  p /= p.sum()
  freq = np.mean(neg_text[:, 0] == 1)
  assert freq == pytest.approx(p[0], abs=0.03)


def test_itg_loss_matches_numpy():
  b, length, vocab = 2, 5, 7
  logits = RNG.normal(size=(b, length, vocab)).astype(np.float32)
  ids = RNG.integers(0, vocab, size=(b, length)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  for smoothing in (0.0, 0.1):
    loss, _ = itg.itg_loss(logits, ids, mask, smoothing)
    terms = []
    for i in range(b):
      for t in range(length - 1):
        if mask[i, t + 1]:
          lp = _np_log_softmax(logits[i, t])
          terms.append(
            -(1 - smoothing) * lp[ids[i, t + 1]] - smoothing * lp.mean()
          )
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
  dec = np.asarray(itg.decoder_inputs(jnp.asarray(ids), 99))
  assert (dec[:, 0] == 99).all() and (dec[:, 1:] == ids[:, 1:]).all()


def test_parse_loss_mix():
  assert set(mix.parse_loss_mix("it").weights) == {"itc", "itm", "itg"}
  assert set(mix.parse_loss_mix("it-ii").weights) == {"itc", "itm", "itg", "ii"}
  assert set(mix.parse_loss_mix("it-ui").weights) == {"itc", "itm", "itg", "ui"}
  assert set(mix.parse_loss_mix("all").weights) == set(mix.ALL_OBJECTIVES)
  assert set(mix.parse_loss_mix("all", has_text=False).weights) == {"ii", "ui"}
  assert mix.parse_loss_mix("itc,ii", {"ii": 0.5}).weights == {
    "itc": 1.0,
    "ii": 0.5,
  }
  with pytest.raises(ValueError, match="unknown objectives"):
    mix.parse_loss_mix("it-xx")
  with pytest.raises(ValueError, match="no objective left"):
    mix.parse_loss_mix("it", has_text=False)


@pytest.fixture(scope="module")
def tiny_model():
  bc = BertConfig(
    vocab_size=30,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=8,
  )
  model = Stage1Model(
    QFormerConfig(bc, num_queries=2, num_cf_tokens=2, cf_dim=4), embed_dim=8
  )
  cf, ty = jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32)
  ids, mask = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), cf, ty, ids, mask))
  return model, params["params"]


def _batch(b=4, length=6):
  r = np.random.default_rng(1)
  mask = np.ones((b, length), np.int32)
  mask[1, 4:] = 0
  return {
    "text_item": np.arange(b, dtype=np.int32),
    "text_ids": r.integers(1, 30, size=(b, length)).astype(np.int32),
    "text_mask": mask,
    "ii_a": np.array([0, 1, 2, 3], np.int32),
    "ii_b": np.array([4, 5, 6, 7], np.int32),
    "ui_user": np.array([0, 1, 2, 0], np.int32),
    "ui_item": np.array([1, 2, 3, 4], np.int32),
  }


def _loss(model, params, table, batch, rng, loss_mix):
  """The jitted stage-1 loss (op-by-op Linen is slow on CPU)."""
  fn = lambda p, t, b, r: mix.stage1_loss(model, p, t, b, r, loss_mix, 3, 1)
  return jax.jit(fn)(params, table, batch, rng)


def test_stage1_loss_sums_enabled_objectives(tiny_model):
  model, params = tiny_model
  table = jax.random.normal(jax.random.key(2), (3 + 8, 4))
  batch = _batch()
  rng = jax.random.key(3)
  parts = {}
  for name in mix.ALL_OBJECTIVES:
    loss, metrics = _loss(
      model, params, table, batch, rng, mix.LossMix({name: 1.0})
    )
    assert set(k for k in metrics if k.endswith("_loss")) == {f"{name}_loss"}
    parts[name] = float(loss)
  weights = {"itc": 1.0, "itm": 2.0, "itg": 0.5, "ii": 1.0, "ui": 3.0}
  total, metrics = _loss(model, params, table, batch, rng, mix.LossMix(weights))
  want = sum(weights[n] * parts[n] for n in weights)
  assert float(total) == pytest.approx(want, rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_ui_loss_uses_user_rows_of_the_cf_table(tiny_model):
  model, params = tiny_model
  table = np.asarray(jax.random.normal(jax.random.key(2), (3 + 8, 4)))
  batch = _batch()
  ui = mix.LossMix({"ui": 1.0})
  rng = jax.random.key(0)
  base, _ = _loss(model, params, table, batch, rng, ui)
  changed = table.copy()
  changed[:3] *= -1.0  # users only
  moved, _ = _loss(model, params, changed, batch, rng, ui)
  ii = mix.LossMix({"ii": 1.0})
  ii_base, _ = _loss(model, params, table, batch, rng, ii)
  ii_moved, _ = _loss(model, params, changed, batch, rng, ii)
  assert float(base) != float(moved)
  assert float(ii_base) == float(ii_moved)


def test_gradients_reach_queries_and_text_branch(tiny_model):
  model, params = tiny_model
  table = jax.random.normal(jax.random.key(2), (3 + 8, 4))
  loss_mix = mix.parse_loss_mix("itc,ui")
  grads = jax.jit(
    jax.grad(
      lambda p: mix.stage1_loss(
        model, p, table, _batch(), jax.random.key(0), loss_mix, 3, 1
      )[0]
    )
  )(params)
  norms = jax.tree.map(lambda g: float(jnp.abs(g).max()), grads)
  assert norms["qformer"]["query_tokens"] > 0
  assert norms["qformer"]["layer_0"]["cross_attention"]["query"]["kernel"] > 0
  assert norms["qformer"]["layer_0"]["ffn"]["output"]["kernel"] > 0
  assert all(np.isfinite(v) for v in jax.tree.leaves(norms))


def test_answer_weighting_gives_every_prompt_one_vote():
  from ilm_jax.objectives.answer_loss import mean_answer_nll

  # Row 0: a 4-token identifier answer with high loss; row 1: a 12-token
  # text answer with low loss; row 2: no answer (a re-ranking row).
  nll = np.zeros((3, 12), np.float32)
  mask = np.zeros((3, 12), np.float32)
  nll[0, :4], mask[0, :4] = 3.0, 1.0
  nll[1, :], mask[1, :] = 1.0, 1.0
  token = float(mean_answer_nll(jnp.asarray(nll), jnp.asarray(mask), "token"))
  example = float(
    mean_answer_nll(jnp.asarray(nll), jnp.asarray(mask), "example")
  )
  assert token == pytest.approx((4 * 3.0 + 12 * 1.0) / 16)
  assert example == pytest.approx((3.0 + 1.0) / 2)
  empty = mean_answer_nll(jnp.zeros((2, 3)), jnp.zeros((2, 3)), "example")
  assert float(empty) == 0.0
  with pytest.raises(ValueError, match="token"):
    mean_answer_nll(jnp.asarray(nll), jnp.asarray(mask), "row")
