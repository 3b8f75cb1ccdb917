"""Stage-2 training: frozen LLM, stage-1 start, and an end-to-end tiny run."""

import copy
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.cf.table import CFTable
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.convert.frozen_llm import tiny_llm
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.encoding import (
  EntityCoding,
  PromptEncoder,
  encode_fitting,
)
from ilm_jax.data.stage2.records import write_stage2_records
from ilm_jax.data.stage2.sampling import training_prompts
from ilm_jax.eval import metrics as M
from ilm_jax.experiment_config import loop_config
from ilm_jax.models.ilm import ItemLanguageModel, SoftTokenEncoder
from ilm_jax.models.llm import Decoder
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.pipeline import cf as cf_stage
from ilm_jax.pipeline import stage2
from ilm_jax.train import loop
from tests.tiny import STAGE2_QCFG as QCFG
from tests.tiny import stage2_config


def _size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree))


def test_frozen_llm_unchanged_and_absent_from_optimiser_state(
  tmp_path, toy_split
):
  llm_config, llm_params, tok = tiny_llm(0)
  split = toy_split
  index = random_indexing(split.num_items)
  encoder = SoftTokenEncoder("ilm", llm_config.embed_dim, QCFG)
  model = ItemLanguageModel(Decoder(llm_config), encoder, split.num_users)
  boxed = model.init_encoder(jax.random.key(0), 8)
  enc = PromptEncoder(tok, index, split.num_users, EntityCoding(2))
  prompts = training_prompts(split, index, P.TASKS, 8, 3)
  ex = [encode_fitting(enc, p, 256, True) for p in prompts]
  write_stage2_records(tmp_path / "train", ex)
  data = BucketBatches(tmp_path / "train", 8, (256,), 16, enc.pad_id)
  cfg = loop_config()
  cfg.learning_rate, cfg.warmup_steps, cfg.num_steps = 1e-2, 0, 3
  trainer = loop.Trainer(
    model.loss, cfg, nn.unbox(boxed), nn.get_partition_spec(boxed)
  )
  cf = np.random.default_rng(0).normal(size=(18, 8)).astype(np.float32)
  before = copy.deepcopy(llm_params)
  start = jax.tree.map(np.asarray, nn.unbox(boxed))
  state = trainer.init_state(nn.unbox(boxed))
  frozen = trainer.place_frozen({"llm": llm_params, "cf": cf})
  losses = []
  for _ in range(3):
    state, metrics = trainer.step(
      state, frozen, trainer.place_batch(next(data))
    )
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  # the LLM (host copy and the placed copy) is bit-identical
  for a, b, c in zip(
    jax.tree.leaves(before),
    jax.tree.leaves(llm_params),
    jax.tree.leaves(jax.device_get(frozen["llm"])),
  ):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  # the optimiser holds Adam moments of the encoder only
  n_enc, n_llm = _size(start), _size(llm_params)
  n_opt = _size(state.opt_state)
  assert 2 * n_enc <= n_opt < 2 * n_enc + 16
  assert n_llm > 16
  # ... and the encoder did train (both Q-Former and adapter moved)
  trained = jax.device_get(state.params)
  assert not np.allclose(
    trained["adapter"]["kernel"], start["adapter"]["kernel"]
  )
  assert not np.allclose(
    trained["qformer"]["query_tokens"], start["qformer"]["query_tokens"]
  )


def _save_stage1(workdir):
  model = Stage1Model(QCFG, embed_dim=8)
  cf = np.zeros((2, 8), np.float32)
  ids = np.zeros((2, 5), np.int32)
  params = nn.unbox(
    jax.jit(model.init)(
      jax.random.key(5),
      cf,
      np.zeros(2, np.int32),
      ids,
      np.ones((2, 5), np.int32),
    )["params"]
  )
  state = loop.TrainState(step=np.int32(7), params=params, opt_state={})
  manager = ckpt.make_manager(workdir / "stage1" / loop.CHECKPOINT_DIR, 1, 1)
  ckpt.save(manager, 7, state, {}, {}, force=True)
  # The model file stage 1 writes beside its checkpoints: the exact shape.
  model_file = {
    "bert": dataclasses.asdict(QCFG.bert),
    "num_queries": QCFG.num_queries,
    "num_cf_tokens": QCFG.num_cf_tokens,
    "cf_dim": QCFG.cf_dim,
    "cross_attention_freq": QCFG.cross_attention_freq,
  }
  (workdir / "stage1" / "qformer.json").write_text(json.dumps(model_file))
  manager.wait_until_finished()
  manager.close()
  return params


@functools.cache
def test_stage2_starts_from_stage1_checkpoint(tmp_path):
  saved = _save_stage1(tmp_path)
  config = stage2_config(init="stage1")
  llm_config, _, _ = tiny_llm(0)
  model, boxed, init = stage2.build_model(config, tmp_path, 5, 8, llm_config)
  assert init == "stage1"
  assert model.encoder.qformer_config == QCFG
  q = nn.unbox(boxed)["qformer"]
  np.testing.assert_array_equal(
    q["query_tokens"], saved["qformer"]["query_tokens"]
  )
  np.testing.assert_array_equal(
    q["layer_0"]["cross_attention"]["query"]["kernel"],
    saved["qformer"]["layer_0"]["cross_attention"]["query"]["kernel"],
  )
  # the text-only heads of stage 1 are not carried into stage 2
  assert "ffn" not in q["layer_0"] and "word_embeddings" not in q.get(
    "embeddings", {}
  )
  # A loss-ablation run lives in its own directory; a missing one is an
  # error naming it, never a silent random start.
  config.stage2.stage1_dir = "stage1_it"
  with pytest.raises(FileNotFoundError, match="stage1_it"):
    stage2.build_model(config, tmp_path, 5, 8, llm_config)
  (tmp_path / "stage1").rename(tmp_path / "stage1_it")
  _, boxed, init = stage2.build_model(config, tmp_path, 5, 8, llm_config)
  assert init == "stage1"
  np.testing.assert_array_equal(
    nn.unbox(boxed)["qformer"]["query_tokens"],
    saved["qformer"]["query_tokens"],
  )
  config.stage2.init = "random"
  model, _, init = stage2.build_model(config, tmp_path, 5, 8, llm_config)
  assert init == "random"
  # ILM-rand has exactly the shape stage 1 trains (from config.qformer).
  assert model.encoder.qformer_config == QCFG


def _write_cf_table(config, workdir):
  """A random CF table the cf stage accepts as up to date.

  (The ALS stage itself is tested elsewhere; here it would only cost time.)
  """
  split = load_split(config.dataset)
  rows = split.num_users + split.num_items
  emb = np.random.default_rng(0).normal(size=(rows, config.cf.dim))
  CFTable(emb.astype(np.float32), split.num_users, split.num_items).save(
    workdir / cf_stage.CF_DIR, config=cf_stage._provenance(config)
  )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ilm", "mlp", "text"])
def test_run_end_to_end_on_tiny_llm(tmp_path, variant):
  config = stage2_config(variant=variant)
  if variant == "ilm":
    # Re-ranking SASRec's candidates too (SASRec trained on the way), and
    # training on an inner SASRec's lists beside the inner ALS's.
    config.stage2.evaluations += ("rerank:rerank:valid:unseen:sasrec",)
    config.stage2.rerank.train_retrievers = ("als", "sasrec")
  _write_cf_table(config, tmp_path)
  results = stage2.run(config, tmp_path)
  assert results["variant"] == variant and results["steps"] == 3
  assert results["start_step"] == 0  # trained from scratch in this call
  # The mixture trained: every configured task (text-only prompts have no
  # soft tokens to identify), adding up to the examples; ranking tasks at
  # least half of them.
  mixture = results["train_mixture"]
  assert sum(mixture.values()) == results["train_examples"]
  tasks = set(config.stage2.tasks) - (
    {P.IDENTIFY} if variant == "text" else set()
  )
  assert set(mixture) == tasks
  ranking = sum(n for t, n in mixture.items() if t in P.RANKING_TASKS)
  assert ranking >= 0.5 * results["train_examples"]
  evaluations = results["evaluations"]
  # One entry per declared evaluation, in declared order, carrying its
  # own fields.
  assert list(evaluations) == list(config.stage2.evaluations)
  if variant == "ilm":
    by_sasrec = evaluations["rerank:rerank:valid:unseen:sasrec"]["metrics"]
    by_als = evaluations["rerank:rerank:valid:unseen"]["metrics"]
    assert (by_sasrec["retrieved_by"], by_als["retrieved_by"]) == (
      "sasrec",
      "als",
    )
    assert by_sasrec["ilm"]["users"] == by_als["ilm"]["users"] == 6
    assert f"recall@{by_sasrec['num_candidates']}" in by_sasrec["lists"]
    assert (tmp_path / "sasrec" / "checkpoints").is_dir()
    assert (
      "top 10 of sasrec" in (tmp_path / "stage2" / "results.md").read_text()
    )
    training = results["rerank_training"]
    assert training["lists_sasrec"]["examples"] == training["positions"]
    assert training["lists"]["examples"] == training["positions"]
    assert (tmp_path / "sasrec_inner" / "checkpoints").is_dir()
    assert (
      "training lists (inner SASRec)"
      in (tmp_path / "stage2" / "results.md").read_text()
    )
  assert evaluations["rerank:rerank:valid:unseen"]["split"] == "valid"
  for task in P.ITEM_TASKS:
    entry = evaluations[f"generate:{task}:valid:unseen"]
    assert (entry["kind"], entry["task"]) == ("generate", task)
    assert (entry["split"], entry["templates"]) == ("valid", "unseen")
    assert "retrieval" not in entry  # no retrieval head trained
    metrics = entry["metrics"]
    assert metrics["valid_rate"] == 1.0  # every beam is an existing item
    assert metrics["users"] == 4
    for key in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
      for kind in ("filtered", "unfiltered"):
        assert 0.0 <= metrics[f"{kind}/{key}"] <= 1.0
    # What the identifiers show: agreement per prefix length against
    # chance, how many items were named, and a few users' lists.
    found = entry["identifiers"]
    assert found["prefix_agreement"]
    for level in found["prefix_agreement"]:
      assert 0.0 <= level["agreement"] <= 1.0 and 0.0 < level["chance"] < 1.0
    assert 1 <= found["distinct_top1"] <= found["distinct_listed"]
    assert len(found["examples"]) == min(4, config.stage2.eval.keep_examples)
    assert all(
      len(e["generated"]) == config.stage2.eval.num_beams
      for e in found["examples"]
    )
    # The search skips what the user has seen: no list names a history
    # item, so dropping seen items afterwards changes nothing.
    assert entry["exclude_seen"] is True
    assert entry["trie_softmax"] is False  # how the beams were scored
    # Per-user ranks of the same users give back the metrics (for paired
    # comparisons between runs).
    ranks = np.asarray(entry["user_ranks"]["filtered"])
    assert len(entry["user_ranks"]["users"]) == len(ranks) == 4
    assert np.mean(ranks < 10) == pytest.approx(metrics["filtered/HR@10"])
    assert not any(
      set(e["generated"]) & set(e["history"]) for e in found["examples"]
    )
    for key in ("HR@10", "NDCG@10"):
      assert metrics[f"filtered/{key}"] == metrics[f"unfiltered/{key}"]
  for task in (P.DESCRIPTION, P.PROFILE):
    entry = evaluations[f"text:{task}:-:unseen"]
    assert entry["split"] == "-"
    metrics = entry["metrics"]
    assert -1.0 <= metrics["SC"] <= 1.0 and metrics["prompts"] > 0
    assert len(entry["examples"]) > 0
  desc = evaluations["text:description:-:unseen"]["metrics"]
  assert 0.0 <= desc["title_accuracy"] <= 1
  # Re-ranking: every evaluated user, the ILM beside both nulls, with SEs.
  for task in P.RERANK_TASKS:
    rr = evaluations[f"rerank:{task}:valid:unseen"]["metrics"]
    for name in ("ilm", "retriever", "shuffled", "popularity"):
      assert rr[name]["users"] == 6
      assert 0.0 <= rr[name]["HR@10"] <= 1.0 and rr[name]["HR@10_se"] >= 0
    assert rr["vs_shuffled"]["HR@10"]["verdict"] in (M.ABOVE, M.BELOW, M.WITHIN)
    assert rr["order"] == "retriever" and rr["labels"] == "letters"
    # Per-user ranks give back the metrics (paired comparisons of runs).
    kept = evaluations[f"rerank:{task}:valid:unseen"]["user_ranks"]
    assert len(kept["users"]) == 6
    for name in ("ilm", "retriever"):
      hits = np.mean(np.asarray(kept[name]) < 10)
      assert hits == pytest.approx(rr[name]["HR@10"])
  assert results["rerank_training"]["positions"] > 0
  assert (
    "re-ranking retrieved candidates"
    in (tmp_path / "stage2" / "results.md").read_text()
  )
  saved = json.loads((tmp_path / "stage2" / "results.json").read_text())
  assert saved["evaluations"] == results["evaluations"]
  assert (
    "sequential/valid/unseen"
    in (tmp_path / "stage2" / "results.md").read_text()
  )
  assert "digit by digit" in (tmp_path / "stage2" / "results.md").read_text()
  assert (tmp_path / "stage2" / "results.png").stat().st_size > 0
  # a rerun resumes from the final checkpoint instead of training again,
  # reading the training examples written the first time
  records = tmp_path / "stage2" / (stage2.RECORDS_FILE + ".array_record")
  written = records.stat().st_mtime_ns
  again = stage2.run(config, tmp_path)
  again_seq = again["evaluations"]["generate:sequential:valid:unseen"]
  assert again_seq["metrics"]["valid_rate"] == 1.0
  assert again["start_step"] == 3  # resumed at its last step: no training
  assert records.stat().st_mtime_ns == written


def _head_without_weight():
  config = stage2_config()
  config.stage2.rerank.retriever = "retrieval_head"
  return config


@pytest.mark.slow
def test_run_with_retrieval_head_reports_full_ranking(tmp_path):
  _write_cf_table(stage2_config(), tmp_path)
  config = stage2_config(
    retrieval_weight=1.0, tasks=(P.SEQUENTIAL, P.DESCRIPTION, P.RERANK)
  )
  config.stage2.evaluations = (
    "generate:sequential:valid:unseen",
    "rerank:rerank:valid:unseen",
  )
  # The trained head also proposes the candidates the LLM re-ranks.
  config.stage2.rerank.retriever = "retrieval_head"
  results = stage2.run(config, tmp_path, "stage2_retrieval")
  evaluations = results["evaluations"]
  assert list(evaluations) == list(config.stage2.evaluations)
  rr = evaluations["rerank:rerank:valid:unseen"]["metrics"]
  assert rr["retrieved_by"] == "retrieval_head"
  assert rr["ilm"]["users"] == 6
  with pytest.raises(ValueError, match="retrieval_weight"):
    stage2.run(_head_without_weight(), tmp_path, "y")
  assert "retrieval_loss" in results["train"]
  # The head's full ranking sits beside beam search in the same entry.
  generative = evaluations["generate:sequential:valid:unseen"]["metrics"]
  full = evaluations["generate:sequential:valid:unseen"]["retrieval"]
  assert set(generative) >= {k for k in full if k != "seconds"}
  assert full["filtered/users"] == 4
  for key, value in full.items():
    if not key.endswith(("seconds", "users")):
      assert 0.0 <= value <= 1.0, key
  assert (tmp_path / "stage2_retrieval" / "results.json").exists()
  with pytest.raises(ValueError, match="text"):
    stage2.run(
      stage2_config(retrieval_weight=1.0, variant="text"), tmp_path, "x"
    )
