"""Stage "cf": implicit ALS on the training interactions -> workdir/cf."""

from __future__ import annotations

import json
import pathlib

import ml_collections
import tqdm
from absl import logging

from ilm_jax.cf import table as table_lib
from ilm_jax.cf.als import ALSConfig, train_als
from ilm_jax.data import load_split
from ilm_jax.sharding.mesh import make_mesh

CF_DIR = "cf"


def als_config(config: ml_collections.ConfigDict) -> ALSConfig:
  c = config.cf
  return ALSConfig(
    dim=c.dim, reg=c.reg, alpha=c.alpha, sweeps=c.sweeps, seed=config.seed,
    solver=c.solver, cg_steps=c.cg_steps,
  )  # fmt: skip


def _provenance(config: ml_collections.ConfigDict) -> dict:
  """What the table depends on; a saved table with other values is stale."""
  return json.loads(
    json.dumps({"cf": config.cf.to_dict(), "dataset": config.dataset.to_dict(),
                "seed": config.seed})
  )  # fmt: skip


def run_cf(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> table_lib.CFTable:
  """Trains (or reuses) the CF table for ``config`` under ``workdir/cf``."""
  out = pathlib.Path(workdir) / CF_DIR
  meta = out / table_lib.META_FILE
  if meta.exists():
    saved = json.loads(meta.read_text()).get("config")
    if saved == _provenance(config):
      logging.info("cf: reusing the table in %s", out)
      return table_lib.load_cf_table(out)
    logging.info("cf: %s was made with another config; retraining", out)
  split = load_split(config.dataset)
  users, items = split.train_interactions()
  mesh = make_mesh(tuple(config.mesh.shape))
  cfg = als_config(config)
  with tqdm.tqdm(total=cfg.sweeps, desc="ALS sweeps", unit="sweep") as bar:
    table, info = train_als(
      users, items, split.num_users, split.num_items, cfg, mesh=mesh,
      progress=lambda done, seconds: bar.update(done - bar.n),
    )  # fmt: skip
  table.save(out, config=_provenance(config))
  stats = {
    "users": split.num_users,
    "items": split.num_items,
    "train_interactions": int(len(users)),
    "als_seconds": info["seconds"],
  }
  (out / "metrics.json").write_text(json.dumps(stats, indent=2))
  logging.info("cf: %s", stats)
  return table
