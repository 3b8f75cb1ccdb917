"""Identifier grounding tasks and the ranking share of the training mixture."""

import numpy as np
import pytest

from ilm_jax.convert.frozen_llm import char_tokenizer
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.data.stage2.sampling import training_prompts
from ilm_jax.models.slots import WORD
from ilm_jax.pipeline import stage2

K = 4  # soft tokens per entity


def _encoder(split, index, **coding):
  return PromptEncoder(
    char_tokenizer(),
    index,
    split.num_users,
    EntityCoding(K, **coding),
    max_answer_tokens=24,
  )


def _grounding(split, index, task):
  prompts = training_prompts(split, index, (task,), 100, 5, seed=0)
  return {p.entities()[0][1]: p for p in prompts}


def _prompt_text(encoder, enc):
  words = enc.tokens[: enc.answer_start][
    enc.slot_entity[: enc.answer_start] == WORD
  ]
  return encoder.tokenizer.decode(words.tolist())


def _answer_text(encoder, enc):
  return encoder.tokenizer.decode(enc.tokens[enc.answer_start : -1].tolist())


@pytest.mark.parametrize("ids_as_text", [True, False])
def test_identify_shows_soft_tokens_and_asks_for_the_identifier(
  toy_split, ids_as_text
):
  index = random_indexing(toy_split.num_items, seed=3)
  encoder = _encoder(toy_split, index, ids_as_text=ids_as_text)
  by_item = _grounding(toy_split, index, P.IDENTIFY)
  consumed = set(np.concatenate(toy_split.train_sequences).tolist())
  assert set(by_item) == consumed  # every trained item, nothing else
  for item in sorted(by_item)[:4]:
    prompt = by_item[item]
    enc = encoder.encode(prompt, with_answer=True)
    row = toy_split.num_users + item
    # The item's K soft tokens, and no identifier in the prompt's words
    # (whatever ``ids_as_text`` says), since the identifier is the answer.
    assert (enc.slot_entity == row).sum() == K
    assert index.identifier(item) not in _prompt_text(encoder, enc)
    assert _answer_text(encoder, enc) == " " + index.identifier(item)
    assert enc.target_item == item and enc.target_row == row


def test_identify_can_show_the_pooled_tokens_a_history_item_gets(toy_split):
  index = random_indexing(toy_split.num_items, seed=3)
  by_item = _grounding(toy_split, index, P.IDENTIFY)
  item = sorted(by_item)[0]
  row = toy_split.num_users + item
  history = P.render(
    P.templates(P.SEQUENTIAL, seen=True)[0],
    user=0,
    history=[item],
    answer=index.identifier(item),
  )

  def slots(enc):
    return enc.slot_query[enc.slot_entity == row].tolist()

  pooled = _encoder(toy_split, index, list_tokens=2, grounding_tokens="list")
  listed = slots(pooled.encode(history, with_answer=True))
  assert listed == [K, K + 1]  # the two pooled tokens of a list member
  assert slots(pooled.encode(by_item[item], with_answer=True)) == listed
  # The default keeps the entity's K tokens; so does "list" when lists are
  # not pooled.
  full = _encoder(toy_split, index, list_tokens=2)
  assert slots(full.encode(by_item[item], with_answer=True)) == list(range(K))
  unpooled = _encoder(toy_split, index, grounding_tokens="list")
  assert slots(unpooled.encode(by_item[item], with_answer=True)) == list(
    range(K)
  )
  with pytest.raises(ValueError, match="grounding_tokens"):
    EntityCoding(K, grounding_tokens="pooled")


def test_the_stage2_config_chooses_the_grounding_tokens():
  import types

  from ilm_jax.experiment_config import stage2_config

  c = stage2_config()
  encoder = types.SimpleNamespace(tokens_per_entity=K, soft_prompt=0)
  assert stage2.coding_of(c, encoder).grounding_tokens == "entity"
  c.grounding_tokens = "list"
  coding = stage2.coding_of(c, encoder)
  assert coding.grounding_tokens == "list" and coding.pooled


def test_name_shows_the_identifier_and_asks_for_the_title(toy_split):
  index = random_indexing(toy_split.num_items, seed=3)
  encoder = _encoder(toy_split, index)
  by_item = _grounding(toy_split, index, P.NAME)
  for item in sorted(by_item)[:4]:
    enc = encoder.encode(by_item[item], with_answer=True)
    # The identifier in words, no soft tokens at all.
    assert (enc.slot_entity >= 0).sum() == 0
    assert index.identifier(item) in _prompt_text(encoder, enc)
    assert _answer_text(encoder, enc) == f" Film {item}"


def test_grounding_on_the_shipped_catalogue_names_known_films():
  from ilm_jax.data import load_split
  from ilm_jax.experiment_config import dataset_config

  split = load_split(dataset_config())
  raw = {str(r): i for i, r in enumerate(split.catalog.item_ids)}
  toy_story, heat = raw["1"], raw["6"]  # MovieLens movieId 1 and 6
  index = random_indexing(split.num_items, seed=0)
  prompt = P.render(
    P.templates(P.NAME, seen=True)[0],
    item=toy_story,
    answer=P.item_title(split.catalog, toy_story),
  )
  assert prompt.answer == "Toy Story (1995)"
  assert P.item_title(split.catalog, heat) == "Heat (1995)"
  text = "".join(str(v) for k, v in prompt.segments if k == "text")
  assert "title" in text
  identify = P.render(
    P.templates(P.IDENTIFY, seen=True)[0],
    item=heat,
    answer=index.identifier(heat),
  )
  assert identify.entities() == [(P.ITEM_SOFT, heat)]


def test_ranking_tasks_are_repeated_up_to_their_share():
  tasks = [P.DESCRIPTION] * 70 + [P.SEQUENTIAL] * 20 + [P.RERANK] * 10
  extra = stage2._ranking_repeats(tasks, 0.5, seed=0)
  after = tasks + [tasks[i] for i in extra]
  ranking = sum(t in P.RANKING_TASKS for t in after)
  assert ranking >= 0.5 * len(after)
  assert ranking - 1 < 0.5 * (len(after) - 1)  # no more than needed
  assert all(tasks[i] in P.RANKING_TASKS for i in extra)
  assert stage2._ranking_repeats(tasks, 0.3, seed=0) == []
  assert stage2._ranking_repeats([P.DESCRIPTION], 0.5, seed=0) == []


def test_prompt_lengths_command_shows_pooled_lists_are_shorter(tmp_path):
  import json
  import subprocess
  import sys

  from conftest import REPO_ROOT

  subprocess.run(
    [
      sys.executable,
      "launch/prompt_lengths.py",
      "--config=configs/default.py:full",
      "--config.stage2.llm=tiny",
      "--examples_per_task=20",
      "--list_tokens=0,2",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO_ROOT,
    check=True,
    capture_output=True,
  )
  measured = json.loads((tmp_path / "prompt_lengths.json").read_text())
  full, pooled = measured["0"], measured["2"]
  # 20 history items lose 6 of their 8 tokens each; text tasks are alike.
  assert full["sequential"]["mean"] - pooled["sequential"]["mean"] > 60
  assert full["description"]["mean"] == pooled["description"]["mean"]
  assert set(full) >= {"identify", "name", "rerank", "all"}
