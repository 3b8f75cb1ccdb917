"""Restores a trained ILM from a workdir written by ``launch/train.py``.

What a workdir holds and where it comes from: the stage-2 checkpoints
(``stage2/checkpoints``: the trained encoder params and the config they were
trained under), the CF table (``cf/``), the stage-1 Q-Former's shape
(``stage1/qformer.json``, for the ILM), and the dataset, LLM and tokenizer
that config names (rebuilt, not stored). The config comes from the
checkpoint, not from ``workdir/config.json``, which any later invocation may
overwrite; fields added to the code since the run keep today's defaults.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from ilm_jax import files
from ilm_jax.cf.table import CFTable, load_cf_table
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.convert.frozen_llm import load_stage2_llm
from ilm_jax.data import load_split
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.encoding import PromptEncoder
from ilm_jax.eval.trained_ilm import TrainedIlm
from ilm_jax.experiment_config import base_config
from ilm_jax.models.ilm import word_embedding_rms
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.pipeline import sasrec as sasrec_pipeline
from ilm_jax.pipeline import stage2
from ilm_jax.pipeline.cf import CF_DIR
from ilm_jax.train.loop import CHECKPOINT_DIR


@dataclasses.dataclass(frozen=True)
class Restored:
  """Everything a trained workdir gives back.

  Attributes:
    config: the experiment config the stage-2 model was trained under.
    split: the leave-one-out split of its dataset (catalogue included).
    table: the CF table (users first, then items).
    ilm: the trained ILM over ``table`` (``TrainedIlm``).
    step: the stage-2 checkpoint step restored.
  """

  config: ml_collections.ConfigDict
  split: LeaveOneOutSplit
  table: CFTable
  ilm: TrainedIlm
  step: int


def _merged(defaults: ml_collections.ConfigDict, saved: dict, where: str):
  """``defaults`` with every field ``saved`` also has set to its value.

  Fields the code no longer has are ignored (they configured nothing that
  is restored); JSON lists become tuples where the default is a tuple.
  """

  def convert(default, value):
    if isinstance(default, tuple) and isinstance(value, list):
      if default and isinstance(default[0], tuple):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
      return tuple(value)
    if isinstance(default, float) and isinstance(value, int):
      return float(value)
    return value

  def merge(node: ml_collections.ConfigDict, values: dict, path: str):
    for key, value in values.items():
      if key not in node:
        continue
      current = node[key]
      if isinstance(current, ml_collections.ConfigDict):
        if isinstance(value, dict):
          merge(current, value, f"{path}{key}.")
        continue
      try:
        node[key] = convert(current, value)
      except (TypeError, ValueError) as e:
        raise ValueError(
          f"{where}: config field {path}{key} = {value!r} does not fit "
          f"today's code ({e}); retrain this workdir"
        ) from e

  config = ml_collections.ConfigDict(defaults.to_dict())
  merge(config, saved, "")
  return config


def _check_params(expected, saved, where: str):
  """Raises naming the first parameter whose path or shape differs."""
  have = {
    jax.tree_util.keystr(p): np.shape(v)
    for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]
  }
  for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
    key = jax.tree_util.keystr(path)
    if key not in have:
      raise ValueError(f"{where}: the checkpoint has no parameter {key}")
    if have[key] != np.shape(leaf):
      raise ValueError(
        f"{where}: parameter {key} has shape {have[key]}, the model built "
        f"from its config expects {np.shape(leaf)}"
      )


def restore(workdir, stage_dir: str = stage2.STAGE_DIR) -> Restored:
  """Restores the trained stage-2 model of ``workdir`` and its inputs.

  Args:
    workdir: the ``--workdir`` of ``launch/train.py`` (stages cf, stage1
      for the ILM, and stage2 done).
    stage_dir: the stage-2 run's subdirectory (``launch/compare_stage2.py``
      writes ``stage2_<variant>``).

  Raises:
    FileNotFoundError: a stage has not been run; the message says which.
    ValueError: the workdir does not match today's code or its dataset.
  """
  workdir = files.path(workdir)
  checkpoints = workdir / stage_dir / CHECKPOINT_DIR
  if not checkpoints.exists():
    raise FileNotFoundError(
      f"{checkpoints}: no trained stage-2 model here; run launch/train.py "
      f"--workdir={workdir} first"
    )
  saved_params, saved_config = ckpt.load_params(checkpoints)
  config = _merged(base_config(), saved_config, str(checkpoints))
  split = load_split(config.dataset)
  table = load_cf_table(workdir / CF_DIR)
  if (table.num_users, table.num_items) != (split.num_users, split.num_items):
    raise ValueError(
      f"{workdir / CF_DIR}: CF table of {table.num_users} users / "
      f"{table.num_items} items, but the dataset config gives "
      f"{split.num_users} / {split.num_items}"
    )
  c = config.stage2
  llm_config, llm_params, tokenizer = load_stage2_llm(
    c.llm, config.seed, c.get("llm_dtype", "float32")
  )
  model, boxed, _ = stage2.build_model(
    config,
    workdir,
    split.num_users,
    table.dim,
    llm_config,
    config.seed,
    word_embedding_rms(Decoder(llm_config), llm_params),
  )
  _check_params(nn.unbox(boxed), saved_params, str(checkpoints))
  index = stage2.item_index(config, split, table)
  prompt_encoder = PromptEncoder(
    tokenizer,
    index,
    split.num_users,
    stage2.coding_of(c, model.encoder),
    c.max_answer_tokens,
  )
  ilm = TrainedIlm(
    model,
    jax.tree.map(np.asarray, saved_params),
    llm_params,
    np.asarray(table.embeddings),
    prompt_encoder,
    stage2.build_trie(prompt_encoder, llm_config.vocab_size),
  )
  return Restored(config, split, table, ilm, _latest_step(checkpoints))


def _latest_step(checkpoints: pathlib.Path) -> int:
  steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
  return max(steps, default=0)


def restore_sasrec(workdir, restored: Restored) -> tuple:
  """(SASRec module, params) of the workdir's SASRec run, as its latest
  checkpoint holds them: serving never trains.

  Raises:
    FileNotFoundError: no SASRec was trained there (the eval stage with
      "sasrec" in ``eval.baselines``, or ``launch/sasrec.py``, trains it).
  """
  out = files.path(workdir) / sasrec_pipeline.STAGE_DIR
  if not (out / CHECKPOINT_DIR).exists():
    raise FileNotFoundError(
      f"{out}: no trained SASRec; run the eval stage with 'sasrec' in "
      "--config.eval.baselines (or launch/sasrec.py) on this workdir first"
    )
  # The loop restores a run that reached num_steps without a step, so
  # num_steps is set to the latest checkpoint's (a step count may change on
  # resume; nothing else that trains does).
  scfg = ml_collections.ConfigDict(restored.config.sasrec.to_dict())
  scfg.train.num_steps = _latest_step(out / CHECKPOINT_DIR)
  model, params, _ = sasrec_pipeline.train_sasrec(
    restored.config, scfg, restored.split, out
  )
  return model, params
