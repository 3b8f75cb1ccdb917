"""The SASRec baseline: trained on training prefixes, ranked like the others.

``run_sasrec(config, workdir)`` trains SASRec with the shared loop in
``workdir/sasrec`` (checkpoints/, tensorboard/, metrics.json; an interrupted
run resumes) on the split's training sequences only, then ranks the whole
catalogue for every user on each of ``config.eval.splits`` with the same
full-ranking code as popularity and ALS: the training sequence predicts the
validation item, the training sequence plus the validation item predicts
the test item; filtered and unfiltered. Results go to
``workdir/eval/sasrec.{json,md}`` (``baselines.write_results``).
``Retriever`` lists a trained model's top N items per user from the same
scores, ties broken as the full ranking breaks them.

Config fields: ``dataset``, ``eval``, ``mesh`` and ``sasrec``
(``ilm_jax.sasrec_config``), or the ``sasrec`` section passed explicitly.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ilm_jax import files
from ilm_jax.data import load_split
from ilm_jax.data import sasrec as sasrec_data
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.eval import full_ranking
from ilm_jax.models import sasrec as sasrec_model
from ilm_jax.pipeline.baselines import (
  EVAL_DIR,
  MODES,
  write_results,
  write_user_ranks,
)
from ilm_jax.sharding import mesh as mesh_lib
from ilm_jax.train import loop, provenance

STAGE_DIR = "sasrec"
MODEL_NAME = "sasrec"
RESULTS_NAME = "sasrec"
# Metric of the in-training validation (eval_every / the end).
_VALID_K = 10


def build_model(
  scfg: ml_collections.ConfigDict, num_items: int
) -> sasrec_model.SASRec:
  """The SASRec module ``config.sasrec`` describes for I items."""
  return sasrec_model.SASRec(
    sasrec_model.SASRecConfig(
      num_items=int(num_items),
      max_len=int(scfg.max_len),
      dim=int(scfg.dim),
      num_blocks=int(scfg.num_blocks),
      num_heads=int(scfg.num_heads),
      dropout=float(scfg.dropout),
    )
  )


def init_params(model: sasrec_model.SASRec, seed: int):
  """(host params, logical PartitionSpecs) of a fresh model."""
  items = jnp.full((1, model.config.max_len), sasrec_model.PAD, jnp.int32)
  boxed = jax.jit(model.init)(jax.random.key(seed), items)
  specs = nn.get_partition_spec(boxed)["params"]
  return jax.device_get(nn.unbox(boxed)["params"]), specs


def loss_function(model: sasrec_model.SASRec, name: str) -> loop.LossFn:
  """The loop's ``loss_fn(params, frozen, batch, rng)`` for ``name``.

  Raises:
    ValueError: an unknown loss, naming the known ones.
  """
  if name not in sasrec_model.LOSSES:
    raise ValueError(
      f"unknown sasrec.loss {name!r}; known: {sorted(sasrec_model.LOSSES)}"
    )
  loss = sasrec_model.LOSSES[name]

  def loss_fn(params, frozen, batch, rng):
    del frozen  # SASRec has no frozen inputs
    return loss(model, params, batch, rng)

  return loss_fn


def scorer(model: sasrec_model.SASRec, params, histories: np.ndarray):
  """``score_fn`` for ``full_ranking``: users -> float32[B, I] scores.

  Args:
    model: the module.
    params: its (host or device) params.
    histories: int32[U, L] every user's right-aligned history for the split.
  """
  histories = jnp.asarray(histories)

  @jax.jit
  def scores(users):
    return model.apply(
      {"params": params},
      histories[users],
      method=sasrec_model.SASRec.score_all,
    )

  return scores


def history_scores(
  model: sasrec_model.SASRec, params, history: np.ndarray
) -> np.ndarray:
  """float32[I] every item's score after one history (int32[n], oldest
  first; its last ``max_len`` items are read), e.g. a new user's."""
  rows = sasrec_data.right_aligned([history], int(model.config.max_len))
  scores = model.apply(
    {"params": params},
    jnp.asarray(rows),
    method=sasrec_model.SASRec.score_all,
  )
  return np.array(scores[0], np.float32)  # a writable host copy


class Retriever:
  """A trained SASRec's top-N items per user, over the whole catalogue.

  Args:
    model: the module.
    params: its params.
    split: the leave-one-out split.
    split_name: which held-out split's history to read ("valid": training
      sequence; "test": training sequence plus the validation item).
  """

  def __init__(
    self,
    model: sasrec_model.SASRec,
    params,
    split: LeaveOneOutSplit,
    split_name: str,
  ):
    self.num_items = split.num_items
    self.score_fn = scorer(
      model,
      jax.device_get(params),
      sasrec_data.evaluation_histories(split, split_name, model.config.max_len),
    )
    self.seen = split.seen_items(split_name)

  def top_n(
    self, users: np.ndarray, n: int, filtered: bool = True
  ) -> np.ndarray:
    """int32[B, n] each user's n best items, best first.

    Args:
      users: int32[B] user indices.
      n: list length.
      filtered: drop the user's earlier items (``seen_items``) first, as the
        filtered full ranking does.

    Ties go to the lower item index, as in ``full_ranking``.
    """
    users = np.asarray(users, np.int32)
    scores = self.score_fn(users)
    if filtered:
      exclude = np.zeros((len(users), self.num_items), bool)
      for row, user in enumerate(users):
        exclude[row, self.seen[user]] = True
      scores = jnp.where(jnp.asarray(exclude), -jnp.inf, scores)
    # lax.top_k keeps the lower index first among equal scores.
    return np.asarray(jax.lax.top_k(scores, n)[1], np.int32)


def evaluate(
  model: sasrec_model.SASRec,
  params,
  split: LeaveOneOutSplit,
  splits,
  ks,
  batch_size: int,
  modes=MODES,
  ranks: dict | None = None,
) -> dict:
  """Full-catalogue ranking of every user's held-out item.

  Args:
    model: the module.
    params: its params.
    split: the leave-one-out split.
    splits: names of held-out splits ("valid", "test").
    ks: HR/NDCG cut-offs.
    batch_size: users per ranking batch.
    modes: "unfiltered" and/or "filtered" (the user's earlier items
      removed from the ranking).
    ranks: a dict that receives {split: int64[N] filtered ranks of users
      0..N-1} (None: not kept).

  Returns:
    {split: {mode: {metric: value}}}, standard errors included.
  """
  params = jax.device_get(params)
  out = {}
  for split_name in splits:
    histories = sasrec_data.evaluation_histories(
      split, split_name, model.config.max_len
    )
    out[split_name], by_mode = full_ranking.evaluate_modes(
      scorer(model, params, histories),
      split.targets(split_name),
      split.num_items,
      split.seen_items(split_name),
      modes,
      ks=tuple(ks),
      batch_size=int(batch_size),
    )
    if ranks is not None and "filtered" in by_mode:
      ranks[split_name] = by_mode["filtered"]
  return out


def train_sasrec(
  config: ml_collections.ConfigDict,
  scfg: ml_collections.ConfigDict,
  split: LeaveOneOutSplit,
  out: pathlib.Path,
  extra_provenance: dict | None = None,
) -> tuple[sasrec_model.SASRec, dict, dict]:
  """Trains (or resumes) SASRec in ``out``.

  ``extra_provenance``: what else the state depends on (e.g. the cut of an
  inner split, ``rerank.inner_sasrec``), recorded beside the data and recipe.

  Returns:
    (model, trained host params, final train metrics and validation).
  """
  model = build_model(scfg, split.num_items)
  seed = int(scfg.train.seed)
  params, specs = init_params(model, seed)
  data = sasrec_data.SASRecBatches(
    split,
    int(scfg.batch_size),
    int(scfg.max_len),
    int(scfg.num_negatives),
    seed,
  )

  def eval_fn(params, step):
    del step
    valid = evaluate(
      model,
      params,
      split,
      ("valid",),
      (_VALID_K,),
      config.eval.batch_size,
      modes=("filtered",),
    )["valid"]["filtered"]
    return {f"valid/{k}": v for k, v in valid.items() if k != "users"}

  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  result = loop.train(
    loss_function(model, str(scfg.loss)),
    params,
    specs,
    data,
    scfg.train,
    out,
    mesh=mesh,
    rules=config.mesh.rules,
    run_config=json.loads(config.to_json_best_effort()),
    eval_fn=eval_fn,
    desc="sasrec",
    provenance={**_provenance(config, scfg), **(extra_provenance or {})},
  )
  return model, jax.device_get(result.state.params), dict(result.metrics)


def recipe(scfg: ml_collections.ConfigDict) -> dict:
  """A SASRec config's fields that shape training (its shape, loss and
  optimiser; the loop's pace left out)."""
  fields = {k: v for k, v in scfg.to_dict().items() if k != "train"}
  return {**fields, "train": provenance.without_bookkeeping(scfg.train)}


def _provenance(
  config: ml_collections.ConfigDict, scfg: ml_collections.ConfigDict
) -> dict:
  """What a SASRec state depends on: its data, shape, loss and optimiser."""
  return {
    "dataset": provenance.dataset_fields(config.dataset.to_dict()),
    "sasrec": recipe(scfg),
  }


def run_sasrec(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  scfg: ml_collections.ConfigDict | None = None,
) -> dict:
  """Trains SASRec and evaluates it beside the baselines.

  Args:
    config: the experiment config (``dataset``, ``eval``, ``mesh``; and
      ``sasrec`` unless ``scfg`` is given).
    workdir: the experiment directory; writes ``sasrec/`` and
      ``eval/sasrec.*``.
    scfg: the SASRec section (default: ``config.sasrec``).

  Returns:
    {"sasrec": {split: {mode: {metric: value}}}}, the shape of
    ``run_baselines``' results.
  """
  workdir = files.path(workdir)
  scfg = scfg if scfg is not None else config.sasrec
  split = load_split(config.dataset)
  model, params, train_metrics = train_sasrec(
    config, scfg, split, workdir / STAGE_DIR
  )
  logging.info("sasrec: trained, %s", train_metrics)
  ranks = {}
  results = {
    MODEL_NAME: evaluate(
      model,
      params,
      split,
      tuple(config.eval.splits),
      tuple(config.eval.ks),
      config.eval.batch_size,
      ranks=ranks,
    )
  }
  write_results(results, workdir / EVAL_DIR, RESULTS_NAME, config)
  write_user_ranks(workdir / EVAL_DIR, MODEL_NAME, ranks)
  return results


def split_scorers(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  split: LeaveOneOutSplit,
):
  """SASRec as a retriever for re-ranking: split name -> score function.

  Trains SASRec in ``workdir/sasrec`` with ``config.sasrec``, or restores
  it when the baselines stage already did (the loop resumes a finished run
  without a step), so the candidates re-ranked are those of the SASRec row
  of the baseline table.
  """
  scfg = config.sasrec
  model, params, _ = train_sasrec(
    config, scfg, split, files.path(workdir) / STAGE_DIR
  )
  max_len = int(scfg.max_len)

  def factory(split_name: str):
    histories = sasrec_data.evaluation_histories(split, split_name, max_len)
    return scorer(model, params, histories)

  return factory
