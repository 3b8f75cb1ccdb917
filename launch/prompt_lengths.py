r"""Tokens per stage-2 example, with and without short list tokens.

A history or candidate item costs its identifier's word tokens plus its soft
tokens: K of them when lists keep every query token (``list_tokens=0``), or
the K tokens pooled into ``list_tokens``. This command encodes the same
training prompts (every task of the full mixture, re-ranking prompts with
``stage2.rerank.num_candidates`` candidates) under each setting with the
real tokenizer and prints, per task, mean / median / max tokens and the
share longer than the largest length bucket (those lose their oldest
history items in training). Tokenisation only: it takes seconds.

Example:
  python launch/prompt_lengths.py --config=configs/default.py:full \
      --list_tokens=0,2,1 --workdir=workdir/prompt_lengths
"""

import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from ilm_jax import console, files
from ilm_jax.convert.frozen_llm import TINY, char_tokenizer
from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.model_packages import smollm2_gguf_path
from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import make_index
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.data.stage2.sampling import training_prompts
from ilm_jax.eval.report import markdown_table

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/default.py:full",
  "Experiment config (dataset, qformer.num_queries, stage2 prompt fields).",
  lock_config=True,
)
_LIST_TOKENS = flags.DEFINE_list(
  "list_tokens", ["0", "2", "1"], "Settings of stage2.list_tokens compared."
)
_PER_TASK = flags.DEFINE_integer(
  "examples_per_task", 500, "Prompts encoded per task."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/prompt_lengths", "Where prompt_lengths.{json,md} go."
)
_CACHE = console.define_compilation_cache()


def rerank_prompts(split, num_candidates: int, count: int, max_history: int):
  """Re-ranking prompts of ``count`` training prefixes, random candidates.

  Only lengths matter here, and they do not depend on which items are
  listed, so no retriever is trained.
  """
  rng = np.random.default_rng(0)
  users, histories, targets = split.sequential_examples()
  out = []
  for row in rng.permutation(len(users))[:count]:
    others = rng.choice(split.num_items, num_candidates - 1, replace=False)
    shown = np.append(others[others != targets[row]][: num_candidates - 1], 0)
    shown[-1] = targets[row]
    out.append(
      P.render(
        P.templates(P.RERANK, seen=True)[0],
        user=int(users[row]),
        history=histories[row][histories[row] >= 0][-max_history:],
        target_item=int(targets[row]),
        candidates=rng.permutation(shown),
      )
    )
  return out


def main(argv):
  console.start(argv, _CACHE.value)
  config = _CONFIG.value
  c = config.stage2
  split = load_split(config.dataset)
  index = make_index(split, "random", config.seed, None)
  tokenizer = (
    char_tokenizer()
    if c.llm == TINY
    else load_gguf_tokenizer(smollm2_gguf_path())
  )
  tasks = [t for t in c.tasks if t in P.TASKS + P.GROUNDING_TASKS]
  prompts = training_prompts(
    split, index, tasks, _PER_TASK.value, c.max_history, config.seed
  )
  prompts += rerank_prompts(
    split, c.rerank.num_candidates, _PER_TASK.value, c.max_history
  )
  k = int(config.qformer.num_queries)
  longest = int(c.length_buckets[-1])
  rows, measured = {}, {}
  for setting in tqdm(_LIST_TOKENS.value, desc="list_tokens settings"):
    coding = EntityCoding(
      k, ids_as_text=c.ids_as_text, list_tokens=int(setting)
    )
    encoder = PromptEncoder(
      tokenizer, index, split.num_users, coding, c.max_answer_tokens
    )
    by_task: dict[str, list[int]] = {}
    for p in prompts:
      n = len(encoder.encode(p, with_answer=p.answer is not None).tokens)
      by_task.setdefault(p.task, []).append(n)
    by_task["all"] = [n for v in list(by_task.values()) for n in v]
    for task, lengths in by_task.items():
      lengths = np.asarray(lengths)
      stats = {
        "examples": int(len(lengths)),
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "max": int(lengths.max()),
        f"over {longest}": float((lengths > longest).mean()),
      }
      measured.setdefault(setting, {})[task] = stats
      rows[f"{task}, list_tokens={setting}"] = stats
  title = (
    f"{config.dataset.name}: tokens per stage-2 example, K = {k} soft tokens "
    f"per entity, {c.max_history} history items, "
    f"{c.rerank.num_candidates} candidates"
  )
  table = markdown_table(rows, title)
  print(table)
  files.write_text(os.path.join(_WORKDIR.value, "prompt_lengths.md"), table)
  files.write_json(
    os.path.join(_WORKDIR.value, "prompt_lengths.json"), measured
  )


if __name__ == "__main__":
  app.run(main)
