"""Stage 1: item-language representation learning of the Q-Former.

``run(config, workdir)`` reads the CF table from ``workdir/cf``, trains the
Q-Former (text branch from a pretrained BERT) with the configured loss mix on
the training interactions, evaluates retrieval before and after, and writes
``workdir/stage1``: checkpoints/, tensorboard/, metrics.json and
``qformer.json`` (what stage 2 needs to rebuild the Q-Former; see
``load_stage1_qformer``). An interrupted run resumes from its last checkpoint.

Config fields (``ilm_jax.experiment_config``): ``dataset``, ``cf``,
``qformer``, ``stage1`` (``batch_size``, ``losses``, ``loss_weights``,
``train.*`` loop fields, ``eval.*``) and ``mesh``.
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
from ilm_jax.cf.table import TABLE_FILE
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.convert import bert as convert_bert
from ilm_jax.data import load_split
from ilm_jax.data.global_batches import on_first_host
from ilm_jax.data.stage1 import (
  RECORDS_DIR,
  Stage1Batches,
  build_stage1_examples,
  write_stage1_records,
)
from ilm_jax.eval.stage1_retrieval import evaluate
from ilm_jax.models.bert import BertConfig
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives import mix as mix_lib
from ilm_jax.pipeline.cf import CF_DIR, cf_table
from ilm_jax.sharding import mesh as mesh_lib
from ilm_jax.train import loop, provenance
from ilm_jax.train.summaries import METRICS_FILE, MetricsLog

STAGE_DIR = "stage1"
MODEL_FILE = "qformer.json"


def qformer_shape(
  qcfg: ml_collections.ConfigDict, cf_dim: int
) -> QFormerConfig:
  """The Q-Former shape that ``config.qformer`` describes.

  Reads only the BERT's config, so stage 2 can build the same shape
  randomly initialised (ILM-rand) without loading weights.
  """
  bert_cfg = convert_bert.load_bert_config(qcfg.bert_path or None)
  layers = int(qcfg.num_layers) or bert_cfg.num_hidden_layers
  if layers > bert_cfg.num_hidden_layers:
    raise ValueError(
      f"qformer.num_layers {layers} exceeds the BERT's "
      f"{bert_cfg.num_hidden_layers} layers"
    )
  if qcfg.max_text_length > bert_cfg.max_position_embeddings:
    raise ValueError(
      f"qformer.max_text_length {qcfg.max_text_length} exceeds the BERT's "
      f"{bert_cfg.max_position_embeddings} positions"
    )
  bert_cfg = BertConfig(**{**bert_cfg.__dict__, "num_hidden_layers": layers})
  return QFormerConfig(
    bert_cfg,
    num_queries=int(qcfg.num_queries),
    num_cf_tokens=int(qcfg.num_cf_tokens),
    cf_dim=int(cf_dim),
    cross_attention_freq=int(qcfg.cross_attention_freq),
  )


def build_model(
  qcfg: ml_collections.ConfigDict, cf_dim: int
) -> tuple[Stage1Model, BertConfig, dict | None]:
  """The Stage1Model a config describes, plus the BERT weights to load.

  Returns:
    (model, BERT config, BERT params or None when not pretrained).
  """
  qformer = qformer_shape(qcfg, cf_dim)
  bert_params = None
  if qcfg.pretrained:
    _, bert_params = convert_bert.load_bert(qcfg.bert_path or None)
  return (
    Stage1Model(qformer, embed_dim=int(qcfg.embed_dim)),
    qformer.bert,
    bert_params,
  )


def init_params(model: Stage1Model, bert_params: dict | None, seed: int):
  """(params, logical specs) of the model, BERT weights loaded if given."""
  length = 4
  args = (
    jnp.zeros((2, model.config.cf_dim)),
    jnp.zeros((2,), jnp.int32),
    jnp.zeros((2, length), jnp.int32),
    jnp.ones((2, length), jnp.int32),
  )
  boxed = jax.jit(model.init)(jax.random.key(seed), *args)
  specs = nn.get_partition_spec(boxed)["params"]
  params = jax.device_get(nn.unbox(boxed)["params"])
  if bert_params is not None:
    params = dict(params)
    params["qformer"] = convert_bert.init_qformer_from_bert(
      params["qformer"], bert_params
    )
  return params, specs


def _save_model_file(out: pathlib.Path, model: Stage1Model, qcfg) -> None:
  bert_dir = convert_bert.resolve_bert_dir(qcfg.bert_path or None)
  info = {
    "bert": model.config.bert.__dict__,
    "num_queries": model.config.num_queries,
    "num_cf_tokens": model.config.num_cf_tokens,
    "cf_dim": model.config.cf_dim,
    "cross_attention_freq": model.config.cross_attention_freq,
    "embed_dim": model.embed_dim,
    "max_text_length": int(qcfg.max_text_length),
    "tokenizer_dir": str(bert_dir) if qcfg.bert_path else "",
  }
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / MODEL_FILE, info)


def load_stage1_qformer(stage1_dir: str | pathlib.Path):
  """What stage 2 starts from: the trained Q-Former and how to build it.

  Args:
    stage1_dir: ``workdir/stage1`` of a finished (or checkpointed) run.

  Returns:
    (QFormerConfig, Q-Former params (host numpy tree, the ``qformer``
    subtree of the stage-1 params), the model-file dict).
  """
  stage1_dir = files.path(stage1_dir)
  path = stage1_dir / MODEL_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path}: no stage-1 Q-Former here (run stage1)")
  info = files.read_json(path)
  qformer = QFormerConfig(
    BertConfig(**info["bert"]),
    num_queries=info["num_queries"],
    num_cf_tokens=info["num_cf_tokens"],
    cf_dim=info["cf_dim"],
    cross_attention_freq=info["cross_attention_freq"],
  )
  params, _ = ckpt.load_params(stage1_dir / loop.CHECKPOINT_DIR)
  return qformer, params["qformer"], info


def run(
  config: ml_collections.ConfigDict, workdir, out_name: str = STAGE_DIR
) -> dict:
  """Trains stage 1 and returns its final metrics.

  Args:
    config: the experiment config.
    workdir: the experiment directory; reads (or trains) ``cf/``, writes
      ``out_name``.
    out_name: subdirectory of this run (loss ablations share a workdir).

  Returns:
    Final train metrics, final evaluation and the step-0 evaluation (keys
    prefixed ``start/``), i.e. the Q-Former before stage 1.
  """
  workdir = files.path(workdir)
  out = workdir / out_name
  s1, qcfg = config.stage1, config.qformer
  split = load_split(config.dataset)
  table = cf_table(config, workdir, split)
  examples = build_stage1_examples(split)
  loss_mix = mix_lib.parse_loss_mix(
    s1.losses, dict(s1.loss_weights), has_text=examples.has_text
  )
  model, _, bert_params = build_model(qcfg, table.dim)
  tokenizer = convert_bert.BertTokenizer(qcfg.bert_path or None)
  token_ids = text_mask = None
  if examples.has_text:
    token_ids, text_mask = tokenizer(
      list(examples.texts), int(qcfg.max_text_length)
    )
  parts = tuple(
    p
    for p, on in (
      ("text", loss_mix.uses_text),
      ("ii", "ii" in loss_mix),
      ("ui", "ui" in loss_mix),
    )
    if on
  )
  seed = int(s1.train.seed)
  records = out / RECORDS_DIR
  on_first_host(
    lambda: write_stage1_records(records, examples, token_ids, text_mask)
  )
  data = Stage1Batches(records, int(s1.batch_size), parts, seed)
  params, specs = init_params(model, bert_params, seed)
  cf = table.embeddings.astype(np.float32)

  def loss_fn(params, frozen, batch, rng):
    return mix_lib.stage1_loss(
      model,
      params,
      frozen,
      batch,
      rng,
      loss_mix,
      table.num_users,
      tokenizer.decoder_id,
    )

  def eval_fn(params, step):
    del step
    return evaluate(
      model,
      jax.device_get(params),
      cf,
      table.num_users,
      examples,
      token_ids,
      text_mask,
      k=int(s1.eval.k),
      num_candidates=int(s1.eval.candidates),
      batch_size=int(s1.eval.batch_size),
      seed=seed,
    )

  _save_model_file(out, model, qcfg)
  start_metrics = _start_evaluation(out, eval_fn, params)
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  result = loop.train(
    loss_fn,
    params,
    specs,
    data,
    s1.train,
    out,
    mesh=mesh,
    rules=config.mesh.rules,
    frozen=cf,
    run_config=json.loads(config.to_json_best_effort()),
    eval_fn=eval_fn,
    desc="stage1",
    provenance=_provenance(config, workdir),
  )
  final = dict(result.metrics)
  final.update({f"start/{k}": v for k, v in start_metrics.items()})
  final["objectives"] = ",".join(loss_mix.weights)
  logging.info("stage1: %s", final)
  return final


# Retrieval metrics a summary reports: key prefix -> column label.
_RETRIEVAL_COLUMNS = (
  ("i2t_recall", "item-text R@{k}"),
  ("ii_heldout_recall", "item-item held-out R@{k}"),
  ("ui_heldout_recall", "user-item held-out R@{k}"),
  ("ii_heldout_filtered_recall", "item-item held-out R@{k}, filtered"),
  ("ui_heldout_filtered_recall", "user-item held-out R@{k}, filtered"),
)


def retrieval_summary(run_dir: str | pathlib.Path, k: int) -> dict | None:
  """A finished stage-1 run's retrieval before and after training.

  Read from ``run_dir/metrics.json`` (its first and last evaluations), so it
  serves runs trained by another process as well. Whether stage 1 aligned
  the Q-Former at all is what a stage-2 comparison of ILM against ILM-rand
  has to be read against.

  Args:
    run_dir: a stage-1 run's directory (``workdir/stage1`` or an ablation's).
    k: the recall cut-off (``stage1.eval.k``).

  Returns:
    {"step": last evaluated step, "<label>, start": value before training,
    "<label>, trained": value after, "chance R@k": k / items}, labels
    from ``_RETRIEVAL_COLUMNS`` (those the run evaluated); None when the run
    has no evaluation after step 0.
  """
  path = files.path(run_dir) / METRICS_FILE
  if not path.exists():
    return None
  evals = sorted(files.read_json(path).get("eval", []), key=lambda e: e["step"])
  if len(evals) < 2 or evals[0]["step"] != 0:
    return None
  start, end = evals[0], evals[-1]
  out = {"step": int(end["step"])}
  for prefix, label in _RETRIEVAL_COLUMNS:
    key = f"{prefix}_at_{k}"
    if key in end:
      name = label.format(k=k)
      out[f"{name}, start"] = float(start.get(key, float("nan")))
      out[f"{name}, trained"] = float(end[key])
  chance = end.get(f"item_chance_at_{k}")
  if chance is not None:
    out[f"chance R@{k}"] = float(chance)
  return out


def _provenance(config, workdir: pathlib.Path) -> dict:
  """What a stage-1 state depends on: its data, Q-Former shape, objectives,
  optimiser settings and the CF table it read (by content)."""
  s1 = config.stage1
  return {
    "dataset": provenance.dataset_fields(config.dataset.to_dict()),
    "qformer": config.qformer.to_dict(),
    "stage1": {
      "losses": s1.losses,
      "loss_weights": s1.loss_weights.to_dict(),
      "batch_size": s1.batch_size,
      "train": provenance.without_bookkeeping(s1.train),
    },
    "cf_table": provenance.file_digest(
      files.path(workdir) / CF_DIR / TABLE_FILE
    ),
  }


def _start_evaluation(out: pathlib.Path, eval_fn, params) -> dict:
  """The evaluation before any training (cached in metrics.json)."""
  log = MetricsLog(out)
  try:
    for record in log.history.get("eval", []):
      if record["step"] == 0:
        return {k: v for k, v in record.items() if k != "step"}
    metrics = eval_fn(params, 0)
    log.write("eval", 0, metrics)
    return metrics
  finally:
    log.close()
