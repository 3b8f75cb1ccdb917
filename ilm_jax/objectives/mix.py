"""The stage-1 loss mix: which objectives run, and the combined loss.

Presets follow the paper's ablation: ``it`` (ITC + ITM + ITG), ``it-ii``,
``it-ui`` and ``all``; ``ii-ui`` (or any comma list such as ``"itc,ii"``)
serves items without text. On a dataset without text the text objectives are
dropped (items still train through II/UI).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp

from ilm_jax.cf.table import ITEM_TYPE, USER_TYPE
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives import contrastive, itc, itg, itm

TEXT_OBJECTIVES = ("itc", "itm", "itg")
ALL_OBJECTIVES = TEXT_OBJECTIVES + ("ii", "ui")
PRESETS = {
  "it": TEXT_OBJECTIVES,
  "it-ii": TEXT_OBJECTIVES + ("ii",),
  "it-ui": TEXT_OBJECTIVES + ("ui",),
  "all": ALL_OBJECTIVES,
  "ii-ui": ("ii", "ui"),
}


@dataclasses.dataclass(frozen=True)
class LossMix:
  """The objectives a stage-1 run trains, each with a weight.

  Attributes:
    weights: objective name -> weight (only enabled objectives appear).
  """

  weights: dict[str, float]

  @property
  def uses_text(self) -> bool:
    return any(o in self.weights for o in TEXT_OBJECTIVES)

  def __contains__(self, name: str) -> bool:
    return name in self.weights


def parse_loss_mix(
  spec: str, weights: dict[str, float] | None = None, has_text: bool = True
) -> LossMix:
  """A LossMix from a preset name or a comma list of objectives.

  Args:
    spec: "it", "it-ii", "it-ui", "all", "ii-ui" or e.g. "itc,itm,ii".
    weights: optional per-objective weights (default 1).
    has_text: whether the dataset's items have text; if not, text
      objectives are dropped with a warning.

  Returns:
    The LossMix.

  Raises:
    ValueError: unknown names, or nothing left to train.
  """
  spec = spec.strip().lower()
  names = PRESETS.get(spec) or tuple(s.strip() for s in spec.split(",") if s)
  unknown = [n for n in names if n not in ALL_OBJECTIVES]
  if unknown:
    raise ValueError(
      f"stage1.losses {spec!r}: unknown objectives {unknown}; use a preset "
      f"{sorted(PRESETS)} or a comma list of {ALL_OBJECTIVES}"
    )
  if not has_text and any(n in TEXT_OBJECTIVES for n in names):
    logging.warning(
      "items have no text: dropping %s from stage1.losses %r",
      [n for n in names if n in TEXT_OBJECTIVES],
      spec,
    )
    names = tuple(n for n in names if n not in TEXT_OBJECTIVES)
  if not names:
    raise ValueError(f"stage1.losses {spec!r}: no objective left to train")
  weights = weights or {}
  return LossMix({n: float(weights.get(n, 1.0)) for n in names})


def stage1_loss(
  model: Stage1Model,
  params,
  cf_table: jax.Array,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  mix: LossMix,
  num_users: int,
  decoder_id: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted sum of the enabled objectives on one global batch.

  Args:
    model: the Q-Former with heads.
    params: its params (the ``params`` collection, unboxed).
    cf_table: float32[U + I, d] CF table (users first), not trained.
    batch: "text_item" int32[B], "text_ids"/"text_mask" int32[B, L] for the
      text objectives; "ii_a"/"ii_b" int32[B] item indices for II;
      "ui_user"/"ui_item" int32[B] for UI.
    rng: PRNG key (ITM hard-negative sampling).
    mix: which objectives.
    num_users: U, to turn item indices into CF-table rows.
    decoder_id: ITG's decoder start token id.

  Returns:
    (scalar loss, metrics: "loss", "<obj>_loss", "<obj>_acc", temperatures).
  """
  variables = {"params": params}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def apply(method, *args):
    return model.apply(variables, *args, method=method)

  def items(idx):
    cf = jnp.take(cf_table, idx + num_users, axis=0)
    return cf, jnp.full(idx.shape, ITEM_TYPE, jnp.int32)

  def users(idx):
    cf = jnp.take(cf_table, idx, axis=0)
    return cf, jnp.full(idx.shape, USER_TYPE, jnp.int32)

  temps = apply(Stage1Model.temperatures)
  losses, metrics = {}, {}
  if mix.uses_text:
    item_idx = batch["text_item"]
    ids, mask = batch["text_ids"], batch["text_mask"]
    cf, types = items(item_idx)
  if "itc" in mix or "itm" in mix:
    item_feats = apply(Stage1Model.entity_features, cf, types)
    text_feats = apply(Stage1Model.text_features, ids, mask)
    loss, m, sim = itc.itc_loss(item_feats, text_feats, temps["itc"], item_idx)
    if "itc" in mix:
      losses["itc"], metrics["itc_acc"] = loss, m["acc"]
    if "itm" in mix:
      neg_text, neg_item = itm.sample_hard_negatives(
        rng, sim, temps["itc"], item_idx
      )
      b = item_idx.shape[0]
      all_cf = jnp.concatenate([cf, cf, cf[neg_item]])
      all_types = jnp.concatenate([types, types, types[neg_item]])
      all_ids = jnp.concatenate([ids, ids[neg_text], ids])
      all_mask = jnp.concatenate([mask, mask[neg_text], mask])
      logits = apply(
        Stage1Model.itm_logits, all_cf, all_types, all_ids, all_mask
      )
      losses["itm"], m = itm.itm_loss(logits, itm.itm_labels(b))
      metrics["itm_acc"] = m["acc"]
  if "itg" in mix:
    dec_ids = itg.decoder_inputs(ids, decoder_id)
    logits = apply(Stage1Model.itg_logits, cf, types, dec_ids, mask)
    losses["itg"], m = itg.itg_loss(logits, ids, mask)
    metrics["itg_acc"] = m["acc"]
  if "ii" in mix:
    a, b = batch["ii_a"], batch["ii_b"]
    fa = apply(Stage1Model.entity_features, *items(a))
    fb = apply(Stage1Model.entity_features, *items(b))
    losses["ii"], m = contrastive.entity_contrastive_loss(
      fa, fb, temps["ii"], a, b
    )
    metrics["ii_acc"] = m["acc"]
  if "ui" in mix:
    u, i = batch["ui_user"], batch["ui_item"]
    fu = apply(Stage1Model.entity_features, *users(u))
    fi = apply(Stage1Model.entity_features, *items(i))
    losses["ui"], m = contrastive.entity_contrastive_loss(
      fu, fi, temps["ui"], u, i
    )
    metrics["ui_acc"] = m["acc"]
  total = sum(mix.weights[name] * value for name, value in losses.items())
  metrics.update({f"{name}_loss": value for name, value in losses.items()})
  metrics.update({f"temp_{name}": t for name, t in temps.items()})
  metrics["loss"] = total
  return total, metrics
