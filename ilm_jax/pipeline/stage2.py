"""Stage 2: train the soft-token encoder on a frozen LLM, then evaluate.

``run(config, workdir)`` (the ``--stage=stage2`` entry point):

1. reads the split, the CF table (``workdir/cf``, trained if missing) and
   the LLM named by ``stage2.llm``;
2. builds the encoder of ``stage2.variant``; for ``"ilm"`` with
   ``stage2.init = "stage1"`` the Q-Former starts from the latest stage-1
   checkpoint in ``workdir/<stage2.stage1_dir>`` (an error when there is
   none: run stage 1 first); ``init = "random"`` is ILM-rand;
3. trains the encoder only on the multitask prompt mixture with the shared
   loop (the LLM and the CF table are the loop's frozen inputs, so they never
   enter the optimiser state), checkpointing to ``workdir/stage2``; the
   re-ranking tasks' prompts list an inner retriever's candidates
   (``ilm_jax.rerank``);
4. runs the evaluations ``stage2.evaluations`` declares
   (``ilm_jax.eval.evaluations``): ranking items for held-out users by
   trie-constrained beam search (item tasks), decoding item descriptions and
   user profiles greedily, scored by semantic consistency and title
   accuracy (``eval.stage2_tasks``), and re-ranking the retriever's top N
   for every held-out user beside the retriever's order, the shuffled list
   and popularity (``rerank.stage``);
5. writes ``workdir/stage2/results.json`` (``results["evaluations"]``:
   evaluation name -> its kind, task, split, templates and metrics; plus
   ``results.md`` tables and a ``results.png`` plot).
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

from ilm_jax import files
from ilm_jax.cf.table import TABLE_FILE
from ilm_jax.convert import frozen_llm
from ilm_jax.convert.frozen_llm import load_stage2_llm
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.global_batches import on_first_host
from ilm_jax.data.indexing import ItemIndex, make_index
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.encoding import (
  EntityCoding,
  PromptEncoder,
  encode_fitting,
)
from ilm_jax.data.stage2.records import write_stage2_records
from ilm_jax.data.stage2.sampling import training_prompts
from ilm_jax.decode.item_trie import build_item_trie
from ilm_jax.eval import evaluations as E
from ilm_jax.eval import stage2_tasks
from ilm_jax.eval.trained_ilm import TrainedIlm
from ilm_jax.models.ilm import (
  ItemLanguageModel,
  SoftTokenEncoder,
  word_embedding_rms,
)
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.pipeline import sasrec as sasrec_pipeline
from ilm_jax.pipeline import stage1, stage2_report
from ilm_jax.pipeline.cf import CF_DIR, als_config, cf_table
from ilm_jax.rerank import inner_sasrec
from ilm_jax.rerank import stage as rerank
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import loop, provenance

STAGE_DIR = "stage2"
RESULTS_FILE = "results.json"
# Stem of the training examples' record files in the stage directory.
RECORDS_FILE = "examples/train"


def _overlay(boxed, saved, where: str):
  """Values of ``saved`` in the structure (and boxes) of ``boxed``."""

  def pick(path, leaf):
    node = saved
    for key in path:
      name = getattr(key, "key", key)
      if not isinstance(node, dict) or name not in node:
        raise ValueError(
          f"{where}: missing parameter {loop.optim.param_path(path)}"
        )
      node = node[name]
    value = np.asarray(node)
    if value.shape != leaf.value.shape:
      raise ValueError(
        f"{where}: {loop.optim.param_path(path)} has shape {value.shape}, "
        f"expected {leaf.value.shape}"
      )
    return leaf.replace_boxed(jnp.asarray(value, leaf.value.dtype))

  return jax.tree_util.tree_map_with_path(
    pick, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )


def llm_activation_dtype(c) -> np.dtype:
  """The frozen LLM's compute dtype under ``stage2`` config ``c``."""
  return frozen_llm.activation_dtype(
    c.get("llm_activations", "auto"), c.get("llm_dtype", "float32")
  )


def build_model(
  config, workdir, num_users, cf_dim, llm_config, seed=0, token_rms=1.0
):
  """(ItemLanguageModel, boxed encoder params, init description).

  ``token_rms`` is the LLM's word-embedding RMS (``word_embedding_rms``):
  the new adapter / MLP / soft prompt start at that scale.
  """
  c = config.stage2
  saved = None
  if c.init not in ("stage1", "random"):
    raise ValueError(
      f"stage2.init must be 'stage1' or 'random', got {c.init!r}"
    )
  if c.variant == "ilm" and c.init == "stage1":
    # What stage 1 wrote; a missing run is an error, not a silent ILM-rand.
    qcfg, qparams, _ = stage1.load_stage1_qformer(
      files.path(workdir) / c.stage1_dir
    )
    saved = qcfg, qparams
  if saved is not None:
    qcfg = saved[0]
  else:
    # The shape stage 1 would train (config.qformer), randomly initialised:
    # ILM-rand differs from ILM only in its starting point.
    qcfg = stage1.qformer_shape(config.qformer, cf_dim)
  encoder = SoftTokenEncoder(
    variant=c.variant,
    llm_width=llm_config.embed_dim,
    qformer_config=qcfg if c.variant == "ilm" else None,
    mlp_hidden=c.mlp_hidden,
    soft_prompt=c.soft_prompt if c.variant == "text" else c.shared_prompt,
    token_rms=float(token_rms),
  )
  if c.retrieval_weight > 0 and c.variant == "text":
    raise ValueError(
      "stage2.retrieval_weight > 0 needs entity soft tokens; the 'text' "
      "variant has none"
    )
  model = ItemLanguageModel(
    Decoder(
      llm_config,
      dtype=llm_activation_dtype(c),
      remat=c.get("remat", "none"),
    ),
    encoder,
    num_users,
    float(c.retrieval_weight),
    list_tokens=int(c.list_tokens),
    answer_weighting=c.answer_weighting,
  )
  boxed = model.init_encoder(jax.random.key(seed), cf_dim)
  init = "random"
  if saved is not None:
    boxed = dict(boxed)
    boxed["qformer"] = _overlay(boxed["qformer"], saved[1], "stage-1 Q-Former")
    init = "stage1"
  return model, boxed, init


def coding_of(c, encoder: SoftTokenEncoder) -> EntityCoding:
  if c.variant == "text":
    return EntityCoding(
      0,
      ids_as_text=True,
      soft_prompt=c.soft_prompt,
      candidate_labels=c.rerank.labels,
    )
  return EntityCoding(
    encoder.tokens_per_entity,
    ids_as_text=c.ids_as_text,
    soft_prompt=encoder.soft_prompt,
    list_tokens=c.list_tokens,
    candidate_labels=c.rerank.labels,
    grounding_tokens=c.get("grounding_tokens", "entity"),
  )


def item_index(config, split, table) -> ItemIndex:
  """The identifiers of a run's items, from its config (a saved config
  without ``dataset.balanced_tree`` had the plain tree) and CF table."""
  return make_index(
    split,
    config.dataset.indexing,
    config.seed,
    np.asarray(table.items),
    config.dataset.get("balanced_tree", False),
  )


def build_trie(prompt_encoder: PromptEncoder, vocab_size: int):
  sequences = [
    prompt_encoder.answer_tokens(s)
    for s in prompt_encoder.item_index.identifiers
  ]
  return build_item_trie(sequences, vocab_size)


def training_examples(
  c, split, index, prompt_encoder, seed, rerank_prompts=(), mixture=None
):
  """(encoded training examples, set of items that descriptions use).

  ``rerank_prompts`` (``rerank.training_prompts``) join the generative
  tasks' prompts. Where the ranking tasks (``P.RANKING_TASKS``) would be
  fewer than ``c.min_ranking_fraction`` of the examples, their examples are
  repeated (drawn at random, seeded) until they are not, so the text tasks
  never crowd out what the model is judged on. ``mixture``, a dict,
  receives the number of examples trained per task, repeats included.
  """
  generative = tuple(
    t
    for t in c.tasks
    if t in P.TASKS + P.GROUNDING_TASKS
    # Text-only prompts show no soft tokens to identify.
    and not (t == P.IDENTIFY and c.variant == "text")
  )
  prompts = list(rerank_prompts)
  if generative:
    prompts += training_prompts(
      split, index, generative, c.examples_per_task, c.max_history, seed
    )
  examples, tasks, described = [], [], set()
  for p in prompts:
    enc = encode_fitting(prompt_encoder, p, c.length_buckets[-1], True)
    if enc is not None:
      examples.append(enc)
      tasks.append(p.task)
      if p.task == P.DESCRIPTION:
        described.add(p.entities()[0][1])
  extra = _ranking_repeats(tasks, c.min_ranking_fraction, seed)
  examples += [examples[i] for i in extra]
  tasks += [tasks[i] for i in extra]
  if mixture is not None:
    for task in tasks:
      mixture[task] = mixture.get(task, 0) + 1
  return examples, described


def _ranking_repeats(tasks: list[str], fraction: float, seed: int):
  """Indices of ranking examples to repeat so they make up ``fraction``.

  With r ranking examples among n, ``ceil((fraction * n - r) / (1 -
  fraction))`` repeats lift them to ``fraction`` of the enlarged set.
  """
  ranking = [i for i, t in enumerate(tasks) if t in P.RANKING_TASKS]
  n, r = len(tasks), len(ranking)
  if not ranking or r >= fraction * n:
    return []
  need = int(np.ceil((fraction * n - r) / (1.0 - fraction)))
  rng = np.random.default_rng([seed, 2])
  return [ranking[i] for i in rng.integers(r, size=need)]


# Stage-2 fields that only choose what to evaluate after training.
_EVALUATION_ONLY = ("eval", "evaluations")
# How the step runs, not what it computes (a resumed run may change it).
_EXECUTION_ONLY = ("remat",)
# (Training lists come from ``rerank.train_retrievers``, whatever evaluates.)
_RERANK_EVALUATION_ONLY = ("max_users", "batch_size", "retriever")


def _provenance(config, workdir, initial_params) -> dict:
  """What a stage-2 state depends on: data, the training recipe, the CF
  table (by content) and the encoder's starting point (stage 1's Q-Former
  or a seeded random init, by content)."""
  c = config.stage2
  recipe = {
    k: v
    for k, v in c.to_dict().items()
    if k not in (*_EVALUATION_ONLY, *_EXECUTION_ONLY, "train", "rerank")
  }
  recipe["rerank"] = {
    k: v
    for k, v in c.rerank.to_dict().items()
    if k not in _RERANK_EVALUATION_ONLY
  }
  recipe["train"] = provenance.without_bookkeeping(c.train)
  out = {
    "dataset": provenance.dataset_fields(
      config.dataset.to_dict(), identifiers=True
    ),
    "stage2": recipe,
    "cf_table": provenance.file_digest(
      files.path(workdir) / CF_DIR / TABLE_FILE
    ),
    "initial_params": provenance.tree_digest(initial_params),
  }
  if "sasrec" in c.rerank.train_retrievers:
    # Training lists come from the inner SASRec, whose own record guards its
    # recipe but lets its num_steps grow (a finished run extended): here
    # the step count changes the lists, so it is compared too.
    out[provenance.INNER_SASREC] = {
      **sasrec_pipeline.recipe(config.sasrec),
      "num_steps": int(config.sasrec.train.num_steps),
    }
  return out


def run(
  config: ml_collections.ConfigDict, workdir, out_name: str = STAGE_DIR
) -> dict:
  """Trains and evaluates stage 2 under ``workdir/out_name``; returns results.

  ``out_name`` lets several stage-2 variants (``launch/compare_stage2.py``)
  share one workdir's CF table and stage-1 checkpoint.
  """
  workdir = files.path(workdir)
  c = config.stage2
  evaluations = E.parse(c.evaluations)  # a bad entry fails before training
  rerank.check_config(c, evaluations)
  out_dir = workdir / out_name
  out_dir.mkdir(parents=True, exist_ok=True)
  split = load_split(config.dataset)
  table = cf_table(config, workdir, split)
  index = item_index(config, split, table)
  mesh = make_mesh(tuple(config.mesh.shape))
  # A converted checkpoint is restored straight into its shards on the mesh.
  llm_config, llm_params, tokenizer = load_stage2_llm(
    c.llm, config.seed, c.get("llm_dtype", "float32"), mesh, config.mesh.rules
  )
  token_rms = word_embedding_rms(Decoder(llm_config), llm_params)
  model, boxed, init = build_model(
    config,
    workdir,
    split.num_users,
    table.dim,
    llm_config,
    config.seed,
    token_rms,
  )
  prompt_encoder = PromptEncoder(
    tokenizer,
    index,
    split.num_users,
    coding_of(c, model.encoder),
    c.max_answer_tokens,
  )
  trie = build_trie(prompt_encoder, llm_config.vocab_size)
  start = time.time()
  ks = tuple(config.eval.ks)
  rerank_train, rerank_stats = rerank.training_prompts(
    c,
    split,
    als_config(config),
    ks,
    config.seed,
    mesh,
    inner={
      "sasrec": functools.partial(
        inner_sasrec.training_lists, config, split, workdir=workdir
      )
    },
  )
  mixture = {}
  examples, described = training_examples(
    c, split, index, prompt_encoder, config.seed, rerank_train, mixture
  )
  records = out_dir / RECORDS_FILE
  on_first_host(lambda: write_stage2_records(records, examples))
  data = BucketBatches(
    records,
    c.batch_size,
    c.length_buckets,
    c.max_answer_tokens,
    prompt_encoder.pad_id,
    config.seed,
    num_users=split.num_users if c.retrieval_weight > 0 else None,
  )
  prep_seconds = time.time() - start

  llm_specs = nn.get_partition_spec(
    jax.eval_shape(
      lambda: Decoder(llm_config).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
      )
    )["params"]
  )
  frozen = {"llm": llm_params, "cf": np.asarray(table.embeddings)}
  frozen_specs = {"llm": llm_specs, "cf": PartitionSpec(None, None)}
  if c.get("trie_loss", False):
    frozen["trie"] = trie.loss_data
    frozen_specs["trie"] = jax.tree.map(
      lambda a: PartitionSpec(*(None,) * a.ndim), trie.loss_data
    )
  start = time.time()
  result = loop.train(
    model.loss,
    nn.unbox(boxed),
    nn.get_partition_spec(boxed),
    data,
    c.train,
    out_dir,
    mesh=mesh,
    rules=config.mesh.rules,
    frozen=frozen,
    frozen_specs=frozen_specs,
    run_config=json.loads(config.to_json_best_effort()),
    desc="stage2",
    provenance=_provenance(config, workdir, nn.unbox(boxed)),
  )
  train_seconds = time.time() - start
  ilm = TrainedIlm(
    model,
    jax.tree.map(np.asarray, jax.device_get(result.state.params)),
    llm_params,
    frozen["cf"],
    prompt_encoder,
    trie,
  )
  done = stage2_tasks.evaluate(
    c, split, ilm, evaluations, config.seed, described
  )
  scorers = {}
  if "sasrec" in rerank.retrievers_used(c, evaluations):
    scorers["sasrec"] = sasrec_pipeline.split_scorers(config, workdir, split)
  done.update(
    rerank.evaluate(c, split, ilm, table, ks, evaluations, config.seed, scorers)
  )
  results = {
    "variant": c.variant,
    "init": init,
    "llm": c.llm,
    "train_examples": len(examples),
    "train_mixture": mixture,  # examples per task
    "steps": int(c.train.num_steps),
    "prep_seconds": prep_seconds,
    "train_seconds": train_seconds,
    # > 0 when resumed: train_seconds then covers only the steps after it.
    "start_step": int(result.start_step),
    "train": result.metrics,
    # Declared order; a text evaluation without prompts is absent.
    "evaluations": {
      e.name: done[e.name] for e in evaluations if e.name in done
    },
    "rerank_training": rerank_stats,
  }
  files.write_json(out_dir / RESULTS_FILE, results)
  stage2_report.write(results, out_dir, config.dataset.name)
  return results
