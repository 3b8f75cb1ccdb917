"""Stage-2 templates, training prompts from training prefixes, tokenisation."""

import numpy as np
import pytest

from ilm_jax.convert.frozen_llm import char_tokenizer
from ilm_jax.data import prompts as P
from ilm_jax.data.dataset import Catalog
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage2.batches import BucketBatches
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import (
  PROMPT_SUFFIX,
  EntityCoding,
  PromptEncoder,
  encode_fitting,
)
from ilm_jax.data.stage2.records import write_stage2_records
from ilm_jax.data.stage2.sampling import (
  GENERIC_WISH,
  evaluation_prompts,
  text_evaluation_prompts,
  training_prompts,
)
from ilm_jax.models.slots import SOFT_PROMPT, WORD


def _split(num_users=6, num_items=12, seed=0):
  rng = np.random.default_rng(seed)
  genres = np.array(
    [["Comedy", "Drama", "Horror|Comedy", ""][i % 4] for i in range(num_items)]
  )
  catalog = Catalog(
    item_ids=np.array([str(i) for i in range(num_items)]),
    user_ids=np.array([str(u) for u in range(num_users)]),
    item_fields={
      "title": np.array([f"Film {i}" for i in range(num_items)]),
      "genres": genres,
    },
  )
  train = [
    rng.choice(num_items, size=4 + u, replace=False).astype(np.int32)
    for u in range(num_users)
  ]
  valid = rng.integers(0, num_items, num_users).astype(np.int32)
  test = rng.integers(0, num_items, num_users).astype(np.int32)
  return LeaveOneOutSplit("toy", catalog, train, valid, test, max_history=5)


def test_every_task_has_seen_and_held_out_templates():
  for task in P.TASKS:
    seen = P.templates(task, seen=True)
    unseen = P.templates(task, seen=False)
    assert len(seen) >= 2 and len(unseen) >= 1
    assert not {t.text for t in seen} & {t.text for t in unseen}
  with pytest.raises(ValueError, match="unknown stage-2 task"):
    P.templates("poetry", seen=True)


def test_render_puts_entities_in_reading_order():
  tpl = P.Template(P.SEQUENTIAL, "U {user} saw {history}; next?", True)
  prompt = P.render(tpl, user=3, history=[-1, 7, 2], answer="item_1")
  assert prompt.segments == (
    ("text", "U "),
    ("user", 3),
    ("text", " saw "),
    ("history", 7),
    ("text", ", "),
    ("history", 2),
    ("text", "; next?"),
  )
  with pytest.raises(ValueError, match="no value for {history}"):
    P.render(tpl, user=3)


def test_profile_and_wish_come_from_item_genres():
  split = _split()
  # Items 0, 4 are Comedy; 2 is Horror|Comedy; 1 is Drama.
  text = P.profile_text(split.catalog, [0, 4, 2, 1])
  assert text.startswith("Likes Comedy, ")
  assert "Horror" in text and "Drama" in text
  assert P.profile_text(split.catalog, [3]) == ""  # no genres at all
  wish = P.wish_text(split.catalog, 2, np.random.default_rng(0))
  assert wish.endswith("genre") and ("Horror" in wish or "Comedy" in wish)
  assert P.wish_text(split.catalog, 3, np.random.default_rng(0)) == ""


def _contiguous(needle, hay):
  n = len(needle)
  return any(list(hay[i : i + n]) == list(needle) for i in range(len(hay)))


def test_training_prompts_use_training_prefixes_only():
  split = _split()
  index = random_indexing(split.num_items)
  prompts = training_prompts(split, index, P.TASKS, 50, 3, seed=1)
  assert {p.task for p in prompts} == set(P.TASKS)
  for p in prompts:
    tpl = P.TEMPLATES[p.template]
    assert tpl.seen and tpl.task == p.task
    if p.task in (P.SEQUENTIAL, P.CONVERSATIONAL):
      hist = [v for k, v in p.entities() if k == P.HISTORY]
      train = split.train_sequences[p.user]
      assert 1 <= len(hist) <= 3
      # history then target is a window of the user's training sequence
      assert _contiguous(hist + [p.target_item], train)
      assert p.answer == index.identifier(p.target_item)
    if p.task == P.STRAIGHTFORWARD:
      assert p.target_item in split.train_sequences[p.user]


def _encoder(split, soft=2, ids=True, prompt=0):
  index = random_indexing(split.num_items)
  coding = EntityCoding(soft, ids_as_text=ids, soft_prompt=prompt)
  tok = char_tokenizer()
  return PromptEncoder(tok, index, split.num_users, coding, 12), tok, index


def test_encoding_slot_map_and_answer():
  split = _split()
  enc, tok, index = _encoder(split)
  tpl = P.templates(P.SEQUENTIAL, seen=True)[0]
  prompt = P.render(
    tpl, user=1, history=[4, 5], answer=index.identifier(9), target_item=9
  )
  e = enc.encode(prompt, with_answer=True)
  rows = e.slot_entity[e.slot_entity >= 0]
  # user 1 then items 4, 5 (CF rows U + i), two soft tokens each, in order
  u = split.num_users
  assert list(rows) == [1, 1, u + 4, u + 4, u + 5, u + 5]
  assert list(e.slot_query[e.slot_entity >= 0]) == [0, 1] * 3
  words = e.tokens[e.slot_entity == WORD][: e.answer_start - 6]
  text = tok.decode(words)
  assert "user_1" in text and index.identifier(4) in text
  assert text.endswith(PROMPT_SUFFIX)
  answer = list(e.tokens[e.answer_start :])
  assert answer == enc.answer_tokens(index.identifier(9))
  assert answer[-1] == tok.eos_ids[0]
  # without ids as text, no identifier appears, only soft tokens
  enc2, _, _ = _encoder(split, ids=False)
  e2 = enc2.encode(prompt, with_answer=False)
  assert "item_" not in tok.decode(e2.tokens) and e2.answer_start == len(
    e2.tokens
  )


def test_text_only_coding_has_soft_prompt_and_no_entities():
  split = _split()
  enc, tok, index = _encoder(split, soft=0, prompt=3)
  p = P.render(P.templates(P.STRAIGHTFORWARD, True)[0], user=2, answer="x")
  e = enc.encode(p, with_answer=True)
  # BOS opens the sequence (this tokenizer adds it), then the soft prompt.
  assert e.tokens[0] == tok.bos_id and tok.add_bos
  assert list(e.slot_entity[1:4]) == [SOFT_PROMPT] * 3
  assert list(e.slot_query[1:4]) == [0, 1, 2]
  assert not np.any(e.slot_entity >= 0)


def test_encode_fitting_drops_oldest_history():
  split = _split()
  enc, _, _ = _encoder(split)
  tpl = P.templates(P.SEQUENTIAL, seen=True)[0]
  p = P.render(tpl, user=0, history=[1, 2, 3, 4], answer="item_1001")
  full = enc.encode(p, True)
  fitted = encode_fitting(enc, p, len(full.tokens) - 1, True)
  kept = [r for r in np.unique(fitted.slot_entity) if r >= split.num_users]
  assert sorted(kept) == [split.num_users + i for i in (2, 3, 4)]
  assert encode_fitting(enc, p, 10, True) is None


def test_collate_fixed_shapes_unique_entities_and_targets():
  split = _split()
  enc, _, index = _encoder(split)
  tpl = P.templates(P.SEQUENTIAL, seen=True)[0]
  ex = [
    enc.encode(P.render(tpl, user=0, history=[1, 2], answer="item_1"), True),
    enc.encode(P.render(tpl, user=1, history=[2, 3], answer="item_22"), True),
  ]
  batch = collate(ex, 200, 12, 8, enc.pad_id)
  assert batch["tokens"].shape == (2, 200)
  assert batch["target_positions"].shape == (2, 12)
  u = split.num_users
  assert list(batch["entities"][:5]) == [0, 1, u + 1, u + 2, u + 3]
  for r, e in enumerate(ex):
    local = batch["slot_entity"][r, : len(e.tokens)]
    rows = np.where(local >= 0, batch["entities"][np.maximum(local, 0)], -1)
    np.testing.assert_array_equal(
      rows, np.where(e.slot_entity >= 0, e.slot_entity, -1)
    )
    m = batch["target_mask"][r].sum()
    assert m == len(e.tokens) - e.answer_start
    pos = batch["target_positions"][r, :m]
    np.testing.assert_array_equal(
      batch["tokens"][r, pos + 1], batch["target_tokens"][r, :m]
    )
    assert pos[0] == e.answer_start - 1


def test_bucket_batches_are_deterministic_and_resume(tmp_path):
  split = _split()
  enc, _, index = _encoder(split)
  prompts = training_prompts(split, index, P.TASKS, 20, 3)
  ex = [encode_fitting(enc, p, 256, True) for p in prompts]
  records = tmp_path / "train"
  write_stage2_records(records, ex)
  data = BucketBatches(records, 4, (96, 160, 256), 12, enc.pad_id, seed=3)
  first = [next(data) for _ in range(5)]
  assert {b["tokens"].shape[1] for b in first} <= {96, 160, 256}
  assert all(b["tokens"].shape[0] == 4 for b in first)
  assert all(b["entities"].shape == first[0]["entities"].shape for b in first)
  state = data.get_state()
  upcoming = next(data)
  again = BucketBatches(records, 4, (96, 160, 256), 12, enc.pad_id, seed=3)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["tokens"], upcoming["tokens"])


@pytest.mark.parametrize("task", P.ITEM_TASKS)
def test_item_evaluation_prompts_target_the_held_out_item(task):
  split = _split()
  users = np.arange(split.num_users)
  for split_name in ("valid", "test"):
    prompts = evaluation_prompts(split, split_name, False, users, task)
    assert [p.user for p in prompts] == list(users)
    targets = split.targets(split_name)
    for u, p in zip(users, prompts):
      assert p.task == task and p.answer is None
      assert p.target_item == targets[u]
      assert not P.TEMPLATES[p.template].seen
      items = [v for k, v in p.entities() if k == P.HISTORY]
      if task == P.STRAIGHTFORWARD:
        assert items == []
      else:  # the history the split allows, never the target's slot
        np.testing.assert_array_equal(items, split.history(u, split_name))
      if task == P.CONVERSATIONAL:
        text = "".join(v for k, v in p.segments if k == "text")
        genres = P.item_genres(split.catalog, int(targets[u]))
        assert any(g in text for g in genres) or GENERIC_WISH in text


def test_text_evaluation_prompts_carry_reference_text():
  split = _split()
  items = np.arange(split.num_items)
  prompts = text_evaluation_prompts(split, P.DESCRIPTION, False, items)
  assert len(prompts) == split.num_items  # every toy item has a title
  for p in prompts:
    ((kind, item),) = p.entities()
    assert kind == "item"
    assert p.answer == split.catalog.item_text(item)
    assert p.answer.startswith(f"Film {item}")
  users = np.arange(split.num_users)
  prompts = text_evaluation_prompts(split, P.PROFILE, True, users)
  for p in prompts:
    assert P.TEMPLATES[p.template].seen
    assert p.answer == P.profile_text(
      split.catalog, split.train_sequences[p.user]
    )
  with pytest.raises(ValueError, match="description/profile"):
    text_evaluation_prompts(split, P.SEQUENTIAL, True, users)
