"""Stage 2: train the soft-token encoder on a frozen LLM, then evaluate.

``run(config, workdir)`` (the ``--stage=stage2`` entry point):

1. reads the split, the CF table (``workdir/cf``, trained if missing) and
   the LLM named by ``stage2.llm``;
2. builds the encoder of ``stage2.variant``; for ``"ilm"`` with
   ``stage2.init = "stage1"`` the Q-Former starts from the latest stage-1
   checkpoint in ``workdir/stage1/checkpoints`` when there is one (else it
   starts random, which is also ILM-rand's ``init = "random"``);
3. trains the encoder only on the multitask prompt mixture with the shared
   loop (the LLM and the CF table are the loop's frozen inputs, so they never
   enter the optimiser state), checkpointing to ``workdir/stage2``; the
   re-ranking tasks' prompts list an inner retriever's candidates
   (``ilm_jax.rerank``);
4. re-ranks the retriever's top N for every held-out user beside the
   retriever's order, the shuffled list and popularity (``rerank.stage``);
5. ranks items for held-out users by trie-constrained beam search (the
   sequential, straightforward and conversational tasks), decodes item
   descriptions and user profiles greedily and scores them by semantic
   consistency and title accuracy, each with seen and unseen templates,
   and writes ``workdir/stage2/results.json`` (plus ``results.md`` tables
   and a ``results.png`` plot).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data import stage2_examples as S2
from ilm_jax.data.indexing import make_index
from ilm_jax.decode.item_trie import build_item_trie
from ilm_jax.eval import generative, retrieval
from ilm_jax.models.ilm import (
  ItemLanguageModel,
  SoftTokenEncoder,
  word_embedding_rms,
)
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.pipeline import stage2_report
from ilm_jax.pipeline.cf_stage import als_config, run_cf
from ilm_jax.rerank import stage as rerank
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import loop, stage1
from ilm_jax.train.stage2_llm import load_stage2_llm

STAGE_DIR = "stage2"
RESULTS_FILE = "results.json"
CPU_STEPS = 60  # training steps of ``cpu_recipe``


def stage2_config() -> ml_collections.ConfigDict:
  """The ``config.stage2`` fields (the lead composes them into configs)."""
  c = ml_collections.ConfigDict()
  c.variant = "ilm"  # "ilm" | "mlp" (CoLLM) | "text" (ids + soft prompt)
  c.init = "stage1"  # "stage1" (checkpoint when present) | "random"
  c.stage1_dir = "stage1"  # workdir subdirectory of the stage-1 run used
  c.llm = "smollm2"  # LLM source (load_llm) or "tiny" (random, tests)
  c.tasks = P.ALL_TASKS  # multitask mixture (re-ranking tasks included)
  # Defaults are the accelerator-scale recipe (paper-like: long histories,
  # thousands of steps, every user, both splits and template sets);
  # ``cpu_recipe`` is the README main job's 2-core-CPU budget.
  c.examples_per_task = 2000  # training prompts per task (sampled)
  c.max_history = 20  # items in a prompt's history (OpenP5: 20)
  # Padded prompt+answer lengths; longer prompts drop their oldest history
  # items to fit the largest bucket. One bucket = one compile.
  c.length_buckets = (128, 256, 384, 512)
  c.max_answer_tokens = 32  # answer tokens incl. EOS (longer text is cut)
  c.batch_size = 32  # global batch (divisible by data-parallel devices)
  c.ids_as_text = True  # write item/user ids as text before soft tokens
  c.soft_prompt = 8  # "text" variant: trainable soft-prompt vectors
  # "ilm" / "mlp": a shared trainable soft prompt beside the entity tokens
  # (beyond the paper, which has none; 0 = off).
  c.shared_prompt = 0
  c.mlp_hidden = 256  # "mlp" variant: hidden width
  # Soft tokens of each history / candidate item: the entity's K tokens
  # mean-pooled into this many (0 = all K), so long lists stay short (a
  # re-ranking prompt of 20 history items and 20 candidates fits 512).
  c.list_tokens = 2
  c.rerank = rerank.rerank_config()  # re-ranking retrieved candidates
  # Retrieval head (beyond the paper): in-batch softmax loss weight beside
  # the generative loss; > 0 adds the head and reports its full ranking.
  c.retrieval_weight = 0.0
  c.train = loop.loop_config()
  c.train.num_steps = 5000
  c.train.warmup_steps = 200
  # Soft tokens are trained from scratch through a frozen LLM; 1e-3 learned
  # clearly faster than BLIP-2's 1e-4 in short CPU runs (README).
  c.train.learning_rate = 1e-3
  c.train.checkpoint_every = 500
  c.eval = ml_collections.ConfigDict()
  c.eval.num_beams = 10  # beams = length of the ranked list
  c.eval.max_users = -1  # held-out users evaluated (-1 = all)
  c.eval.batch_size = 32  # prompts per beam-search call
  c.eval.splits = ("valid", "test")  # held-out splits ("valid", "test")
  c.eval.templates = ("seen", "unseen")  # template sets
  c.eval.tasks = P.TASKS  # tasks evaluated (item tasks rank, text tasks SC)
  c.eval.max_text_prompts = 200  # items / users per text task (-1 = all)
  c.eval.keep_examples = 5  # generated texts kept in results.json
  return c


def cpu_recipe(c: ml_collections.ConfigDict):
  """Stage-2 fields of the README main job on a 2-core CPU (in place).

  With SmolLM2-135M a step of 8 prompts x 128 tokens takes 2-4 s on two
  cores (``launch/bench_stage2.py``), so training is ~CPU_STEPS steps of
  short prompts, most of them re-ranking. Re-ranking is evaluated for every
  test user, on held-out templates; candidates are named by letters and
  listed items get one pooled soft token each, which keeps a prompt of 20
  candidates under 192 tokens. Generation and the text tasks keep a
  sampled evaluation.
  """
  c.tasks = (P.RERANK, P.SEQUENTIAL, P.DESCRIPTION, P.PROFILE)
  c.examples_per_task = 40  # per generative task; re-ranking has its own
  c.max_history = 5
  # Soft-token prompts fit 112; text-only ones (identifiers written out)
  # need the second bucket.
  c.length_buckets = (112, 224)
  c.max_answer_tokens = 32
  c.batch_size = 8
  c.list_tokens = 1
  c.ids_as_text = False  # entities as soft tokens only: short prompts
  # A shared soft prompt lets a few steps set the task's behaviour.
  c.shared_prompt = 8
  c.train.num_steps = CPU_STEPS
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 50
  c.rerank.labels = "letters"
  c.rerank.examples_per_task = 1000
  c.rerank.tasks = (P.RERANK,)
  c.eval.max_users = 24
  c.eval.batch_size = 8
  c.eval.splits = ("test",)
  c.eval.templates = ("unseen",)
  c.eval.tasks = (P.SEQUENTIAL, P.DESCRIPTION, P.PROFILE)
  c.eval.max_text_prompts = 8
  return c


def shrink_stage2_for_cpu(c: ml_collections.ConfigDict):
  """The CPU-minutes variant of ``stage2_config`` fields (in place)."""
  cpu_recipe(c)
  c.examples_per_task = 200
  c.max_history = 5
  c.length_buckets = (64, 128)
  c.max_answer_tokens = 16
  c.train.num_steps = 30
  c.train.warmup_steps = 5
  c.train.log_every = 5
  c.train.checkpoint_every = 30
  c.eval.max_users = 20
  c.eval.max_text_prompts = 8
  c.eval.templates = ("unseen",)
  c.rerank.num_candidates = 10
  c.rerank.train_holdout = 5
  c.rerank.examples_per_task = 100
  c.rerank.max_users = 40
  return c


def load_stage1_qformer(workdir: pathlib.Path, name: str = stage1.STAGE_DIR):
  """(QFormerConfig, Q-Former params) stage 1 saved in ``workdir``, or None.

  Stage 1 writes its model file (``qformer.json``, the exact Q-Former shape)
  and checkpoints; without both there is nothing to start from.
  """
  stage1_dir = pathlib.Path(workdir) / name
  if not (stage1_dir / stage1.MODEL_FILE).exists():
    return None
  try:
    qcfg, params, _ = stage1.load_stage1_qformer(stage1_dir)
  except FileNotFoundError:
    return None
  return qcfg, params


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


def build_model(
  config, workdir, num_users, cf_dim, llm_config, seed=0, token_rms=1.0
):
  """(ItemLanguageModel, boxed encoder params, init description).

  ``token_rms`` is the LLM's word-embedding RMS (``word_embedding_rms``):
  the new adapter / MLP / soft prompt start at that scale.
  """
  c = config.stage2
  saved = None
  if c.variant == "ilm" and c.init == "stage1":
    saved = load_stage1_qformer(pathlib.Path(workdir), c.stage1_dir)
  elif c.init not in ("stage1", "random"):
    raise ValueError(
      f"stage2.init must be 'stage1' or 'random', got {c.init!r}"
    )
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
    Decoder(llm_config),
    encoder,
    num_users,
    float(c.retrieval_weight),
    list_tokens=int(c.list_tokens),
  )
  boxed = model.init_encoder(jax.random.key(seed), cf_dim)
  init = "random"
  if saved is not None:
    boxed = dict(boxed)
    boxed["qformer"] = _overlay(boxed["qformer"], saved[1], "stage-1 Q-Former")
    init = "stage1"
  elif c.variant == "ilm" and c.init == "stage1":
    logging.warning(
      "stage2: no stage-1 checkpoint in %s; the Q-Former starts random",
      pathlib.Path(workdir) / c.stage1_dir,
    )
  return model, boxed, init


def coding_of(c, encoder: SoftTokenEncoder) -> S2.EntityCoding:
  if c.variant == "text":
    return S2.EntityCoding(
      0,
      ids_as_text=True,
      soft_prompt=c.soft_prompt,
      candidate_labels=c.rerank.labels,
    )
  return S2.EntityCoding(
    encoder.tokens_per_entity,
    ids_as_text=c.ids_as_text,
    soft_prompt=encoder.soft_prompt,
    list_tokens=c.list_tokens,
    candidate_labels=c.rerank.labels,
  )


def build_trie(prompt_encoder: S2.PromptEncoder, vocab_size: int):
  sequences = [
    prompt_encoder.answer_tokens(s)
    for s in prompt_encoder.item_index.identifiers
  ]
  return build_item_trie(sequences, vocab_size)


def training_examples(c, split, index, prompt_encoder, seed, rerank_prompts=()):
  """(encoded training examples, set of items that descriptions use).

  ``rerank_prompts`` (``rerank.training_prompts``) join the generative
  tasks' prompts.
  """
  generative = tuple(t for t in c.tasks if t in P.TASKS)
  prompts = list(rerank_prompts)
  if generative:
    prompts += S2.training_prompts(
      split, index, generative, c.examples_per_task, c.max_history, seed
    )
  examples, described = [], set()
  for p in prompts:
    enc = S2.encode_fitting(prompt_encoder, p, c.length_buckets[-1], True)
    if enc is not None:
      examples.append(enc)
      if p.task == P.DESCRIPTION:
        described.add(p.entities()[0][1])
  return examples, described


def _eval_users(c, split, seed):
  rng = np.random.default_rng(seed)
  users = np.arange(split.num_users)
  if 0 < c.eval.max_users < len(users):
    users = np.sort(rng.choice(users, c.eval.max_users, replace=False))
  return users


def _text_entities(c, split, task, users, described, seed):
  """Items (description) or users (profile) whose answers are decoded.

  Descriptions prefer items no training prompt described, so title accuracy
  measures what the soft tokens carry rather than a memorised answer.
  """
  n = c.eval.max_text_prompts
  if task == P.PROFILE:
    return users[:n] if n > 0 else users
  rng = np.random.default_rng([seed, 1])
  items = rng.permutation(split.num_items)
  fresh = items[~np.isin(items, np.fromiter(described, np.int64))]
  order = np.concatenate([fresh, items[np.isin(items, fresh, invert=True)]])
  return order[:n] if n > 0 else order


def evaluate(
  c,
  split,
  model,
  encoder_params,
  llm_params,
  cf,
  prompt_encoder,
  trie,
  seed=0,
  described=(),
  examples=None,
) -> dict:
  """Generative metrics per task, split and template set.

  Item tasks give ``"{task}/{split}/{templates}"`` -> HR@k / NDCG@k
  (filtered and unfiltered), and with the retrieval head also
  ``"retrieval/{task}/{split}/{templates}"`` (full ranking); text tasks
  give ``"{task}/{templates}"`` -> semantic consistency (and title
  accuracy for item descriptions).

  Args:
    c: ``config.stage2``.
    split: the leave-one-out split.
    model, encoder_params, llm_params, cf: the trained ILM and its inputs.
    prompt_encoder: as in training.
    trie: item-identifier trie.
    seed: seeds user / item choice.
    described: items that training description prompts used.
    examples: a dict that receives a few generated texts per text task
      (``"{task}/{templates}"`` -> [{"generated", "reference"}]), or None.

  Returns:
    {key: {metric: float}}.
  """
  users = _eval_users(c, split, seed)
  tasks = tuple(c.eval.tasks)
  out = {}
  common = dict(batch_size=c.eval.batch_size, buckets=tuple(c.length_buckets))
  items = None
  if model.retrieval_weight > 0:
    items = retrieval.catalogue_vectors(
      model, encoder_params, cf, split.num_items
    )
  for task in (t for t in tasks if t in P.ITEM_TASKS):
    for split_name in c.eval.splits:
      targets = split.targets(split_name)[users]
      seen_items = [split.history_all(int(u), split_name) for u in users]
      for templates in c.eval.templates:
        prompts = S2.evaluation_prompts(
          split, split_name, templates == "seen", users, task,
          c.max_history, seed,
        )  # fmt: skip
        start = time.time()
        ranked = generative.rank_items(
          model, encoder_params, llm_params, cf, prompt_encoder, prompts,
          trie, num_beams=c.eval.num_beams, **common,
        )  # fmt: skip
        metrics = generative.list_metrics(ranked, targets, seen_items)
        metrics["seconds"] = time.time() - start
        metrics["users"] = len(users)
        out[f"{task}/{split_name}/{templates}"] = metrics
        if items is not None:
          start = time.time()
          queries = retrieval.prompt_queries(
            model, encoder_params, llm_params, cf, prompt_encoder, prompts,
            **common,
          )  # fmt: skip
          metrics = retrieval.retrieval_metrics(
            queries, items, targets, seen_items
          )
          metrics["seconds"] = time.time() - start
          out[f"retrieval/{task}/{split_name}/{templates}"] = metrics
  titles = split.catalog.item_fields.get("title")
  for task in (t for t in tasks if t in (P.DESCRIPTION, P.PROFILE)):
    entities = _text_entities(c, split, task, users, described, seed)
    for templates in c.eval.templates:
      prompts = S2.text_evaluation_prompts(
        split, task, templates == "seen", entities
      )
      if not prompts:
        continue
      start = time.time()
      generated = generative.generate_texts(
        model, encoder_params, llm_params, cf, prompt_encoder, prompts,
        max_new_tokens=c.max_answer_tokens, **common,
      )  # fmt: skip
      refs = [p.answer for p in prompts]
      item_titles = None
      if task == P.DESCRIPTION and titles is not None:
        item_titles = [str(titles[p.entities()[0][1]]) for p in prompts]
      metrics = generative.text_metrics(generated, refs, item_titles)
      metrics["seconds"] = time.time() - start
      out[f"{task}/{templates}"] = metrics
      if examples is not None:
        examples[f"{task}/{templates}"] = [
          {"generated": g, "reference": r}
          for g, r in list(zip(generated, refs))[: c.eval.keep_examples]
        ]
  return out


def run(
  config: ml_collections.ConfigDict, workdir, out_name: str = STAGE_DIR
) -> dict:
  """Trains and evaluates stage 2 under ``workdir/out_name``; returns results.

  ``out_name`` lets several stage-2 variants (``launch/compare_stage2.py``)
  share one workdir's CF table and stage-1 checkpoint.
  """
  workdir = pathlib.Path(workdir)
  c = config.stage2
  rerank.check_config(c)
  out_dir = workdir / out_name
  out_dir.mkdir(parents=True, exist_ok=True)
  table = run_cf(config, workdir)
  split = load_split(config.dataset)
  index = make_index(split, config.dataset.indexing, config.seed)
  llm_config, llm_params, tokenizer = load_stage2_llm(c.llm, config.seed)
  token_rms = word_embedding_rms(Decoder(llm_config), llm_params)
  model, boxed, init = build_model(
    config, workdir, split.num_users, table.dim, llm_config, config.seed,
    token_rms,
  )  # fmt: skip
  prompt_encoder = S2.PromptEncoder(
    tokenizer,
    index,
    split.num_users,
    coding_of(c, model.encoder),
    c.max_answer_tokens,
  )
  trie = build_trie(prompt_encoder, llm_config.vocab_size)
  mesh = make_mesh(tuple(config.mesh.shape))
  start = time.time()
  ks = tuple(config.eval.ks)
  rerank_train, rerank_stats = rerank.training_prompts(
    c, split, als_config(config), ks, config.seed, mesh
  )
  examples, described = training_examples(
    c, split, index, prompt_encoder, config.seed, rerank_train
  )
  data = S2.BucketBatches(
    examples,
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
  )
  train_seconds = time.time() - start
  encoder_params = jax.tree.map(np.asarray, jax.device_get(result.state.params))
  text_examples = {}
  metrics = evaluate(
    c,
    split,
    model,
    encoder_params,
    llm_params,
    frozen["cf"],
    prompt_encoder,
    trie,
    config.seed,
    described,
    text_examples,
  )
  rerank_results = {}
  if c.rerank.tasks:
    rerank_results = rerank.evaluate(
      c, split, model, encoder_params, llm_params, frozen["cf"], table,
      prompt_encoder, ks, config.seed,
    )  # fmt: skip
  results = {
    "variant": c.variant,
    "init": init,
    "llm": c.llm,
    "train_examples": len(examples),
    "steps": int(c.train.num_steps),
    "prep_seconds": prep_seconds,
    "train_seconds": train_seconds,
    "train": result.metrics,
    "eval": metrics,
    "rerank": rerank_results,
    "rerank_training": rerank_stats,
    "text_examples": text_examples,
  }
  (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
  stage2_report.write(results, out_dir, config.dataset.name)
  return results
