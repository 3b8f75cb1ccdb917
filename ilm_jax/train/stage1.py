"""Stage 1: item-language representation learning of the Q-Former.

``run(config, workdir)`` reads the CF table from ``workdir/cf``, trains the
Q-Former (text branch from a pretrained BERT) with the configured loss mix on
the training interactions, evaluates retrieval before and after, and writes
``workdir/stage1``: checkpoints/, tensorboard/, metrics.json and
``qformer.json`` (what stage 2 needs to rebuild the Q-Former; see
``load_stage1_qformer``). An interrupted run resumes from its last checkpoint.

Config fields: ``config.dataset`` (the data), ``config.qformer``
(``qformer_config``), ``config.stage1`` (``stage1_config``), and optionally
``config.mesh.shape`` / ``config.mesh.rules``.
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

from ilm_jax.cf.table import load_cf_table
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.convert import bert as convert_bert
from ilm_jax.data import load_split
from ilm_jax.data.stage1 import Stage1Batches, build_stage1_examples
from ilm_jax.models.bert import BertConfig
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives import mix as mix_lib
from ilm_jax.sharding import mesh as mesh_lib
from ilm_jax.train import loop
from ilm_jax.train.stage1_eval import evaluate
from ilm_jax.train.summaries import MetricsLog

STAGE_DIR = "stage1"
CF_DIR = "cf"
MODEL_FILE = "qformer.json"


def qformer_config() -> ml_collections.ConfigDict:
  """Q-Former fields (``config.qformer``)."""
  c = ml_collections.ConfigDict()
  c.bert_path = ""  # HF BERT dir for the text branch; "" = all-MiniLM-L6-v2
  c.pretrained = True  # False: text branch randomly initialised too
  c.num_layers = 0  # Q-Former depth: first N BERT layers; 0 = all (MiniLM: 6)
  c.num_queries = 8  # K query vectors per entity (1..32)
  c.num_cf_tokens = 4  # tokens the CF vector expands to for cross-attention
  c.cross_attention_freq = 2  # queries cross-attend to CF every N layers
  c.embed_dim = 256  # width of the contrastive (ITC/II/UI) space
  c.max_text_length = 32  # word pieces per item text, incl. [CLS]/[SEP]
  return c


def stage1_config() -> ml_collections.ConfigDict:
  """Stage-1 training fields (``config.stage1``): loop fields plus these."""
  c = loop.loop_config()
  c.num_steps = 300  # optimiser updates
  c.learning_rate = 1e-4  # peak AdamW learning rate (BLIP-2: 1e-4)
  c.warmup_steps = 30  # linear warmup steps
  c.checkpoint_every = 100  # steps between checkpoints
  c.log_every = 10  # steps between logged training metrics
  c.losses = "all"  # "it" | "it-ii" | "it-ui" | "all" | "ii-ui" | comma list
  c.loss_weights = ml_collections.ConfigDict(
    {"itc": 1.0, "itm": 1.0, "itg": 1.0, "ii": 1.0, "ui": 1.0}
  )  # per-objective weight in the summed loss
  c.batch_size = 32  # global rows per objective (in-batch negatives)
  c.eval_k = 10  # recall@k cut-off of the retrieval evaluation
  c.eval_candidates = 100  # held-out accuracy: top-1 among this many items
  c.eval_batch_size = 256  # entities/texts per encoding batch at evaluation
  return c


def default_config() -> ml_collections.ConfigDict:
  """A complete config for stage 1 alone (dataset, qformer, stage1, mesh)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # master seed
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "ml-latest-small"  # a key of ilm_jax.data.DATASETS
  c.dataset.path = ""  # raw data location; "" = default
  c.dataset.kcore = -1  # -1 = the dataset's default
  c.dataset.min_rating = 0.0  # drop ratings below this
  c.dataset.max_history = 20  # history cap (OpenP5)
  c.dataset.max_users = -1  # keep the first N users; -1 = all
  c.qformer = qformer_config()
  c.stage1 = stage1_config()
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor) devices
  c.mesh.rules = mesh_lib.DEFAULT_RULES  # logical -> mesh axes
  return c


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
  (out / MODEL_FILE).write_text(json.dumps(info, indent=2))


def load_stage1_qformer(stage1_dir: str | pathlib.Path):
  """What stage 2 starts from: the trained Q-Former and how to build it.

  Args:
    stage1_dir: ``workdir/stage1`` of a finished (or checkpointed) run.

  Returns:
    (QFormerConfig, Q-Former params (host numpy tree, the ``qformer``
    subtree of the stage-1 params), the model-file dict).
  """
  stage1_dir = pathlib.Path(stage1_dir)
  path = stage1_dir / MODEL_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path}: no stage-1 Q-Former here (run stage1)")
  info = json.loads(path.read_text())
  qformer = QFormerConfig(
    BertConfig(**info["bert"]),
    num_queries=info["num_queries"],
    num_cf_tokens=info["num_cf_tokens"],
    cf_dim=info["cf_dim"],
    cross_attention_freq=info["cross_attention_freq"],
  )
  params, _ = ckpt.load_params(stage1_dir / loop.CHECKPOINT_DIR)
  return qformer, params["qformer"], info


def _mesh(config):
  mesh_cfg = config.get("mesh") or {}
  shape = tuple(mesh_cfg.get("shape", (-1, 1, 1)))
  rules = tuple(tuple(r) for r in mesh_cfg.get("rules", mesh_lib.DEFAULT_RULES))
  return mesh_lib.make_mesh(shape), rules


def run(
  config: ml_collections.ConfigDict, workdir, out_name: str = STAGE_DIR
) -> dict:
  """Trains stage 1 and returns its final metrics.

  Args:
    config: with ``dataset``, ``qformer``, ``stage1`` (and optional ``mesh``).
    workdir: the experiment directory; reads ``cf/``, writes ``out_name``.
    out_name: subdirectory of this run (loss ablations share a workdir).

  Returns:
    Final train metrics, final evaluation and the step-0 evaluation (keys
    prefixed ``start/``), i.e. the Q-Former before stage 1.
  """
  workdir = pathlib.Path(workdir)
  out = workdir / out_name
  s1, qcfg = config.stage1, config.qformer
  split = load_split(config.dataset)
  table = load_cf_table(workdir / CF_DIR)
  if (table.num_users, table.num_items) != (split.num_users, split.num_items):
    raise ValueError(
      f"{workdir / CF_DIR}: CF table has {table.num_users} users / "
      f"{table.num_items} items but the split has {split.num_users} / "
      f"{split.num_items}; rerun the cf stage for this dataset config"
    )
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
  data = Stage1Batches(
    examples, token_ids, text_mask, int(s1.batch_size), parts, int(s1.seed)
  )
  params, specs = init_params(model, bert_params, int(s1.seed))
  cf = table.embeddings.astype(np.float32)

  def loss_fn(params, frozen, batch, rng):
    return mix_lib.stage1_loss(
      model, params, frozen, batch, rng, loss_mix, table.num_users,
      tokenizer.decoder_id,
    )  # fmt: skip

  def eval_fn(params, step):
    del step
    return evaluate(
      model, jax.device_get(params), cf, table.num_users, examples,
      token_ids, text_mask, k=int(s1.eval_k),
      num_candidates=int(s1.eval_candidates),
      batch_size=int(s1.eval_batch_size), seed=int(s1.seed),
    )  # fmt: skip

  _save_model_file(out, model, qcfg)
  start_metrics = _start_evaluation(out, eval_fn, params)
  mesh, rules = _mesh(config)
  result = loop.train(
    loss_fn, params, specs, data, s1, out, mesh=mesh, rules=rules,
    frozen=cf, run_config=json.loads(config.to_json_best_effort()),
    eval_fn=eval_fn, desc="stage1",
  )  # fmt: skip
  final = dict(result.metrics)
  final.update({f"start/{k}": v for k, v in start_metrics.items()})
  final["objectives"] = ",".join(loss_mix.weights)
  logging.info("stage1: %s", final)
  return final


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
