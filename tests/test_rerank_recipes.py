"""Re-ranking prompts of every recipe fit its largest length bucket."""

import numpy as np
import pytest

from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.model_packages import smollm2_gguf_path
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import make_index
from ilm_jax.data.stage2.encoding import PromptEncoder
from ilm_jax.experiment_config import get_config
from ilm_jax.models.ilm import SoftTokenEncoder
from ilm_jax.pipeline import stage1, stage2
from ilm_jax.rerank import candidates as C
from ilm_jax.rerank.prompts import rerank_prompts, shown_order


@pytest.fixture(scope="module")
def tokenizer():
  return load_gguf_tokenizer(smollm2_gguf_path())


@pytest.mark.parametrize("variant", ["full", "cpu"])
def test_rerank_prompts_with_full_history_fit_the_largest_bucket(
  tokenizer, variant
):
  config = get_config("ml-latest-small", variant)
  c = config.stage2
  split = load_split(config.dataset)
  index = make_index(split, config.dataset.indexing, config.seed)
  qcfg = stage1.qformer_shape(config.qformer, config.cf.dim)
  encoder = SoftTokenEncoder("ilm", 576, qcfg, soft_prompt=c.shared_prompt)
  coding = stage2.coding_of(c, encoder)
  enc = PromptEncoder(
    tokenizer, index, split.num_users, coding, c.max_answer_tokens
  )
  users = np.arange(0, split.num_users, 10)
  rng = np.random.default_rng(0)
  ranked = np.stack(
    [rng.permutation(split.num_items)[: c.rerank.num_candidates] for _ in users]
  )
  lists = C.CandidateLists(
    users.astype(np.int32),
    [split.history(int(u), "test") for u in users],
    split.targets("test")[users],
    ranked.astype(np.int32),
  )
  shown = shown_order(lists, c.rerank.num_candidates, "retriever", 0)
  for task in P.RERANK_TASKS:
    for seen in (True, False):
      prompts = rerank_prompts(
        lists, shown, task, seen, split.catalog, c.max_history, 0, True
      )
      # Soft-token prompts keep their whole history in the CPU recipe's
      # first bucket (the second is for text-only prompts).
      limit = c.length_buckets[0 if variant == "cpu" else -1]
      for p in prompts:
        e = enc.encode(p, with_answer=False)
        assert len(e.tokens) <= limit, (task, len(e.tokens))
        assert len(e.cand_tokens) == c.rerank.num_candidates
