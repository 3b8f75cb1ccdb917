"""Both stages' training batches through array_record files and grain.

Checks what a run relies on: records read back as written (and are reused
only when unchanged), an interrupted and resumed stream yields exactly the
batches of an uninterrupted one, and per-host shares of every global batch
join into the single-host batch.
"""

import json

import numpy as np
import pytest

from ilm_jax.convert.frozen_llm import char_tokenizer
from ilm_jax.data import prompts as P
from ilm_jax.data.global_batches import HostShard
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.records import RecordSource, write_records
from ilm_jax.data.stage1 import (
  PART_FILES,
  Stage1Batches,
  build_stage1_examples,
  write_stage1_records,
)
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.data.stage2.records import (
  from_record,
  to_record,
  write_stage2_records,
)
from ilm_jax.data.stage2.sampling import training_prompts

BATCH = 4
TEXT_LENGTH = 5
BUCKETS = (96, 160, 256)


def stage2_examples(split):
  """Encoded generative and re-ranking training examples of ``split``."""
  index = random_indexing(split.num_items)
  coding = EntityCoding(2)
  encoder = PromptEncoder(char_tokenizer(), index, split.num_users, coding, 12)
  prompts = training_prompts(split, index, P.TASKS, 8, 3, seed=1)
  template = P.templates(P.RERANK_TASKS[0], seen=True)[0]
  for u in range(split.num_users):
    history = split.train_sequences[u][:-1]
    target = int(split.train_sequences[u][-1])
    others = [i for i in range(split.num_items) if i != target][u : u + 3]
    prompts.append(
      P.render(
        template,
        user=u,
        history=history,
        target_item=target,
        candidates=[*others[: u % 3], target, *others[u % 3 :]],
      )
    )
  return [encoder.encode(p, with_answer=True) for p in prompts], encoder


@pytest.fixture
def stage1_dir(tmp_path, toy_split):
  examples = build_stage1_examples(toy_split)
  n = len(examples.text_items)
  ids = np.arange(n * TEXT_LENGTH, dtype=np.int32).reshape(n, TEXT_LENGTH)
  write_stage1_records(tmp_path / "s1", examples, ids, np.ones_like(ids))
  return tmp_path / "s1"


@pytest.fixture
def stage2_path(tmp_path, toy_split):
  examples, _ = stage2_examples(toy_split)
  write_stage2_records(tmp_path / "s2", examples)
  return tmp_path / "s2"


def make_batches(stage, stage1_dir, stage2_path, num_users, shard):
  if stage == 1:
    parts = ("text", "ii", "ui")
    return Stage1Batches(stage1_dir, BATCH, parts, seed=3, shard=shard)
  return BucketBatches(
    stage2_path,
    BATCH,
    BUCKETS,
    12,
    pad_id=0,
    seed=3,
    num_users=num_users,
    shard=shard,
  )


def assert_same(got: dict, want: dict):
  assert set(got) == set(want)
  for key in want:
    assert got[key].dtype == want[key].dtype, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_records_read_back_as_written(tmp_path, toy_split):
  examples, _ = stage2_examples(toy_split)
  assert any(e.is_rerank for e in examples)
  assert write_stage2_records(tmp_path / "train", examples)
  source = RecordSource(tmp_path / "train")
  assert len(source) == len(examples)
  for n in (0, len(examples) // 2, len(examples) - 1):
    got, want = from_record(source[n]), examples[n]
    assert to_record(got).keys() == to_record(want).keys()
    for key, value in to_record(want).items():
      if isinstance(value, list):
        assert len(got.__dict__[key]) == len(value)
        for a, b in zip(got.__dict__[key], value):
          np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_array_equal(getattr(got, key), value)
  assert source.index["length"].tolist() == [len(e.tokens) for e in examples]


def test_stage1_records_read_back_as_written(stage1_dir, toy_split):
  examples = build_stage1_examples(toy_split)
  pairs = RecordSource(stage1_dir / PART_FILES["ii"])
  got = np.stack([r["pair"] for r in pairs.read(range(len(pairs)))])
  np.testing.assert_array_equal(got, examples.ii_pairs)
  text = RecordSource(stage1_dir / PART_FILES["text"])
  assert [int(r["item"]) for r in text.read(range(len(text)))] == list(
    examples.text_items
  )


def test_identical_records_are_reused_changed_ones_rewritten(tmp_path):
  records = [{"x": np.arange(n, dtype=np.int32)} for n in range(5)]
  assert write_records(tmp_path / "r", records, {"n": np.arange(5)})
  assert not write_records(tmp_path / "r", records, {"n": np.arange(5)})
  assert write_records(tmp_path / "r", records[:4])
  source = RecordSource(tmp_path / "r")
  assert len(source) == 4 and "n" not in source.index
  np.testing.assert_array_equal(source[3]["x"], np.arange(3))


@pytest.mark.parametrize("stage", [1, 2])
def test_interrupted_and_resumed_stream_sees_the_same_batches(
  stage, stage1_dir, stage2_path, toy_split
):
  def batches():
    return make_batches(
      stage, stage1_dir, stage2_path, toy_split.num_users, HostShard()
    )

  uninterrupted = batches()
  want = [next(uninterrupted) for _ in range(14)]  # past an epoch's end
  if stage == 2:
    assert 14 > uninterrupted.steps_per_epoch
  first = batches()
  for _ in range(6):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint does
  del first
  resumed = batches()
  resumed.set_state(state)
  assert resumed.step == 6
  for batch in want[6:]:
    assert_same(next(resumed), batch)


@pytest.mark.parametrize("stage", [1, 2])
def test_two_hosts_shares_join_into_the_global_batch(
  stage, stage1_dir, stage2_path, toy_split
):
  def batches(shard):
    return make_batches(
      stage, stage1_dir, stage2_path, toy_split.num_users, shard
    )

  single = batches(HostShard(0, 1))
  hosts = [batches(HostShard(p, 2)) for p in range(2)]
  for _ in range(8):
    want = next(single)
    shares = [next(h) for h in hosts]
    for share in shares:
      assert all(len(v) == len(want[k]) // 2 for k, v in share.items())
    joined = {k: np.concatenate([s[k] for s in shares]) for k in want}
    assert_same(joined, want)
