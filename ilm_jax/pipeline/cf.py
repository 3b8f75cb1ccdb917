"""Stage "cf": implicit ALS on the training interactions -> workdir/cf.

``cf_table`` is the one way every later stage gets the table: it reuses the
saved table when its provenance (the cf, dataset and seed config) matches,
trains it otherwise, and checks its shape against the split.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import tqdm
from absl import logging

from ilm_jax import files
from ilm_jax.cf import table as table_lib
from ilm_jax.cf.als import ALSConfig, train_als
from ilm_jax.data import LeaveOneOutSplit, load_split
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import provenance

CF_DIR = "cf"


def als_config(config: ml_collections.ConfigDict) -> ALSConfig:
  c = config.cf
  return ALSConfig(
    dim=c.dim,
    reg=c.reg,
    alpha=c.alpha,
    sweeps=c.sweeps,
    seed=config.seed,
    solver=c.solver,
    cg_steps=c.cg_steps,
  )


def _provenance(config: ml_collections.ConfigDict) -> dict:
  """What the table depends on; a saved table with other values is stale."""
  return json.loads(
    json.dumps(
      {
        "cf": config.cf.to_dict(),
        "dataset": provenance.dataset_fields(config.dataset.to_dict()),
        "seed": config.seed,
      }
    )
  )


def cf_table(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  split: LeaveOneOutSplit | None = None,
) -> table_lib.CFTable:
  """The CF table of ``config`` under ``workdir/cf``, trained if needed.

  Args:
    config: the experiment config (``cf``, ``dataset``, ``seed``, ``mesh``).
    workdir: the experiment directory.
    split: the split already loaded by the caller (loaded here if None).

  Raises:
    ValueError: the table's shape does not match the split.
  """
  out = files.path(workdir) / CF_DIR
  meta = out / table_lib.META_FILE
  split = split if split is not None else load_split(config.dataset)
  table = None
  if meta.exists():
    try:
      saved = files.read_json(meta).get("config")
      if saved == _provenance(config):
        table = table_lib.load_cf_table(out)
      else:
        logging.info("cf: %s was made with another config; retraining", out)
    except (ValueError, AttributeError, FileNotFoundError) as e:
      # The table is cheap to refit and ALS is seeded, so a damaged or
      # half-written table (or metadata) is replaced, not trusted.
      logging.warning("cf: %s; refitting the table", e)
  if table is not None:
    logging.info("cf: reusing the table in %s", out)
    return _checked(table, split, out)
  return _train(config, split, out)


def _checked(table, split: LeaveOneOutSplit, out: pathlib.Path):
  if (table.num_users, table.num_items) != (split.num_users, split.num_items):
    raise ValueError(
      f"{out}: CF table has {table.num_users} users / {table.num_items} "
      f"items but the split has {split.num_users} / {split.num_items}; "
      "delete it or rerun the cf stage for this dataset config"
    )
  return table


def _train(config, split: LeaveOneOutSplit, out: pathlib.Path):
  """Fits ALS on the split's training interactions and saves it to ``out``."""
  users, items = split.train_interactions()
  mesh = make_mesh(tuple(config.mesh.shape))
  cfg = als_config(config)
  with tqdm.tqdm(total=cfg.sweeps, desc="ALS sweeps", unit="sweep") as bar:
    table, info = train_als(
      users,
      items,
      split.num_users,
      split.num_items,
      cfg,
      mesh=mesh,
      progress=lambda done, seconds: bar.update(done - bar.n),
    )
  table.save(out, config=_provenance(config))
  stats = {
    "users": split.num_users,
    "items": split.num_items,
    "train_interactions": int(len(users)),
    "als_seconds": info["seconds"],
  }
  files.write_json(out / "metrics.json", stats)
  logging.info("cf: %s", stats)
  return table
