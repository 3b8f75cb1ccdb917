"""Generative evaluation: trie-constrained beam search -> HR@k / NDCG@k.

Each held-out user's prompt is decoded with ``num_beams`` beams that may
only spell existing item identifiers; the beams, best first, are the user's
ranked list over the whole catalogue. "Filtered" drops items the user
already had from that list before scoring (the full-ranking convention);
"unfiltered" scores it as generated.
"""

from __future__ import annotations

import collections

import jax
import numpy as np

from ilm_jax.data import stage2_examples as S2
from ilm_jax.decode.beam_search import beam_search
from ilm_jax.decode.item_trie import ItemTrie, allowed_by_trie, ranked_items
from ilm_jax.eval.metrics import metrics_from_lists
from ilm_jax.models.ilm import ItemLanguageModel

DEFAULT_BEAMS = 10


def rank_items(
  model: ItemLanguageModel,
  encoder_params,
  llm_params,
  cf_table: np.ndarray,
  prompt_encoder: S2.PromptEncoder,
  prompts,
  trie: ItemTrie,
  *,
  batch_size: int,
  buckets,
  num_beams: int = DEFAULT_BEAMS,
) -> np.ndarray:
  """Ranked item lists of prompts by constrained beam search.

  Args:
    model: the ILM (decoder + encoder).
    encoder_params: trained encoder params.
    llm_params: the frozen LLM's params.
    cf_table: float32[rows, d].
    prompt_encoder: tokenises prompts as in training.
    prompts: evaluation Prompts (no answers).
    trie: identifier trie (its sequences come from the same encoder).
    batch_size: prompts per beam-search call.
    buckets: prompt length buckets.
    num_beams: W.

  Returns:
    int32[N, W] item indices best first, -1 where a beam spelled no new item.
  """
  encoded = []
  for p in prompts:
    enc = S2.encode_fitting(prompt_encoder, p, buckets[-1], with_answer=False)
    if enc is None:
      raise ValueError(
        f"an evaluation prompt does not fit {buckets[-1]} "
        "tokens; raise stage2.length_buckets"
      )
    encoded.append(enc)
  per_entity = max([1] + [e.num_entities for e in encoded])
  groups = collections.defaultdict(list)
  for n, e in enumerate(encoded):
    groups[S2.bucket_of(len(e.tokens), buckets)].append(n)
  embed = jax.jit(model.prompt_embeddings)
  out = np.full((len(prompts), num_beams), -1, np.int32)
  for bucket, rows in sorted(groups.items()):
    for start in range(0, len(rows), batch_size):
      chunk = rows[start : start + batch_size]
      padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
      batch = S2.collate(
        [encoded[i] for i in padded],
        buckets[bucket],
        1,
        batch_size * per_entity,
        prompt_encoder.pad_id,
        with_answer=False,
      )
      x = embed(encoder_params, llm_params, cf_table, batch)
      beams = beam_search(
        model.decoder,
        llm_params,
        prompt_embeddings=x,
        prompt_mask=batch["input_mask"],
        num_beams=num_beams,
        max_new_tokens=trie.max_length,
        allowed_fn=allowed_by_trie,
        constraint_data=trie.constraint_data,
      )
      ranked = ranked_items(trie, np.asarray(beams.tokens))
      out[chunk] = ranked[: len(chunk)]
  return out


def filter_seen(ranked: np.ndarray, seen) -> np.ndarray:
  """Drops each row's already-consumed items, keeping order (-1 padded)."""
  out = np.full_like(ranked, -1)
  for n, row in enumerate(ranked):
    keep = row[(row >= 0) & ~np.isin(row, seen[n])]
    out[n, : len(keep)] = keep
  return out


def list_metrics(ranked, targets, seen, ks=(5, 10)) -> dict[str, float]:
  """{"unfiltered/HR@5": ..., "filtered/NDCG@10": ..., "valid_rate": ...}.

  Args:
    ranked: int[N, W] ranked items (-1 = empty).
    targets: int[N] held-out items.
    seen: per row, the items the user had before (for filtering).
    ks: cut-offs.
  """
  out = {}
  for name, lists in (
    ("unfiltered", ranked),
    ("filtered", filter_seen(ranked, seen)),
  ):
    for key, value in metrics_from_lists(lists, targets, ks).items():
      out[f"{name}/{key}"] = value
  out["valid_rate"] = float(np.mean(ranked >= 0))
  return out
