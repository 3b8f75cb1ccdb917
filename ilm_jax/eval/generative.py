"""Generative evaluation: beam search -> HR@k / NDCG@k; greedy text -> SC.

Each held-out user's prompt is decoded with ``num_beams`` beams that may
only spell existing item identifiers; the beams, best first, are the user's
ranked list over the whole catalogue. "Filtered" drops items the user
already had from that list before scoring (the full-ranking convention);
"unfiltered" scores it as generated.

Text tasks (item description, user profile) are decoded greedily and scored
by semantic consistency with the reference text and, for descriptions, by
exact match of the generated title (``ilm_jax.eval.semantic``).
"""

from __future__ import annotations

import collections
import functools

import jax
import numpy as np
import tqdm

from ilm_jax.data.stage2.collate import bucket_of, collate
from ilm_jax.data.stage2.encoding import PromptEncoder, encode_fitting
from ilm_jax.decode.beam_search import beam_search
from ilm_jax.decode.item_trie import (
  ItemTrie,
  allowed_by_trie,
  ranked_items,
  stacked_without,
)
from ilm_jax.decode.sampling import generate
from ilm_jax.eval import semantic
from ilm_jax.eval.metrics import metrics_from_lists
from ilm_jax.models.ilm import ItemLanguageModel

DEFAULT_BEAMS = 10
# Beam search prefills prompts cut to their batch's longest, rounded up to a
# multiple of this: a short prompt in a long bucket costs its own length,
# and the search compiles for a few lengths only.
TRIM_MULTIPLE = 8


@functools.lru_cache(maxsize=32)
def jitted(fn):
  """``jax.jit(fn)``, made once per function: a bound method of the same
  model is the same key (methods compare their instance by identity), so
  repeated calls (a recommender answering requests) reuse the compiled
  program instead of tracing and compiling it anew."""
  return jax.jit(fn)


def prompt_batches(prompt_encoder, prompts, batch_size, buckets):
  """Yields (prompt indices, collated prompt batch without answers).

  Prompts are grouped by length bucket and padded to ``batch_size`` rows
  (repeating the last prompt), so each bucket compiles once.

  Raises:
    ValueError: a prompt does not fit the largest bucket.
  """
  encoded = []
  for p in prompts:
    enc = encode_fitting(prompt_encoder, p, buckets[-1], with_answer=False)
    if enc is None:
      raise ValueError(
        f"an evaluation prompt does not fit {buckets[-1]} "
        "tokens; raise stage2.length_buckets"
      )
    encoded.append(enc)
  per_entity = max([1] + [e.num_entities for e in encoded])
  # Re-ranking prompts: every batch has the same candidate shape.
  num_candidates = max([1] + [len(e.cand_tokens) for e in encoded])
  answer_length = max([1] + [e.answer_length for e in encoded])
  groups = collections.defaultdict(list)
  for n, e in enumerate(encoded):
    groups[bucket_of(len(e.tokens), buckets)].append(n)
  total = sum(-(-len(rows) // batch_size) for rows in groups.values())
  # Evaluations of every held-out user run for minutes on a CPU: a bar on
  # stderr (gone when done) says how far they are.
  bar = tqdm.tqdm(
    total=total, desc=f"{len(prompts)} prompts", unit="batch", leave=False
  )
  for bucket, rows in sorted(groups.items()):
    for start in range(0, len(rows), batch_size):
      bar.update()
      chunk = rows[start : start + batch_size]
      padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
      batch = collate(
        [encoded[i] for i in padded],
        buckets[bucket],
        1,
        batch_size * per_entity,
        prompt_encoder.pad_id,
        with_answer=False,
        num_candidates=num_candidates,
        answer_length=answer_length,
      )
      yield chunk, batch
  bar.close()


def per_prompt(
  fn,
  encoder_params,
  llm_params,
  cf_table,
  prompt_encoder,
  prompts,
  *,
  batch_size,
  buckets,
) -> np.ndarray:
  """``fn(encoder_params, llm_params, cf_table, batch)`` -> float[B, ...],
  jitted and run over prompt batches; float32[N, ...] rows in prompt order."""
  fn = jitted(fn)
  out = None
  for chunk, batch in prompt_batches(
    prompt_encoder, prompts, batch_size, buckets
  ):
    values = np.asarray(fn(encoder_params, llm_params, cf_table, batch))
    if out is None:
      out = np.zeros((len(prompts),) + values.shape[1:], np.float32)
    out[chunk] = values[: len(chunk)]
  return out


def trimmed_length(mask: np.ndarray, room: int = 0) -> int:
  """Columns of a right-padded bool[B, L] prompt mask that decoding keeps:
  the longest prompt plus ``room`` (for the tokens beam search feeds after
  it), rounded up to ``TRIM_MULTIPLE``, at most L (all L when a row is not
  right-padded)."""
  longest = int(mask.sum(axis=1).max()) + room
  keep = min(-(-longest // TRIM_MULTIPLE) * TRIM_MULTIPLE, mask.shape[1])
  return mask.shape[1] if mask[:, keep:].any() else keep


def _embedded_batches(
  model,
  encoder_params,
  llm_params,
  cf_table,
  prompt_encoder,
  prompts,
  batch_size,
  buckets,
  room=0,
):
  """Yields (prompt indices, float[B, L', D] embeddings, bool[B, L'] mask),
  the right-padded prompts cut to L' (``trimmed_length``)."""
  embed = jitted(model.prompt_embeddings)
  for chunk, batch in prompt_batches(
    prompt_encoder, prompts, batch_size, buckets
  ):
    x = embed(encoder_params, llm_params, cf_table, batch)
    mask = np.asarray(batch["input_mask"])
    keep = trimmed_length(mask, room)
    yield chunk, x[:, :keep], mask[:, :keep]


def item_beams(
  model: ItemLanguageModel,
  encoder_params,
  llm_params,
  cf_table: np.ndarray,
  prompt_encoder: PromptEncoder,
  prompts,
  trie: ItemTrie,
  *,
  batch_size: int,
  buckets,
  num_beams: int = DEFAULT_BEAMS,
  exclude=None,
  renormalize: bool = False,
):
  """Yields (prompt indices, Beams) of prompt batches, constrained by
  ``trie`` (``rank_items``' search; the Beams hold padded rows too).

  Each prompt is prefilled once with the identifiers' common start
  (``trie.forced_prefix``) after it, cut to its batch's longest prompt
  plus that start, and its cache shared by its beams. With ``exclude``
  (per prompt, items it must not name) each prompt searches its own pruned
  trie (``stacked_without``).
  """
  # Placed once: host (numpy) weights would be copied into every call.
  encoder_params, llm_params, cf_table = jax.device_put(
    (encoder_params, llm_params, cf_table)
  )
  forced = trie.forced_prefix[: trie.max_length - 1]
  for chunk, x, mask in _embedded_batches(
    model,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    batch_size,
    buckets,
    room=len(forced),
  ):
    constraint = trie.constraint_data
    if exclude is not None:
      sets = [exclude[i] for i in chunk]
      sets += [()] * (x.shape[0] - len(sets))  # padded rows
      constraint = (stacked_without(trie, sets), trie.column_of_token)
    yield (
      chunk,
      beam_search(
        model.decoder,
        llm_params,
        prompt_embeddings=x,
        prompt_mask=mask,
        num_beams=num_beams,
        max_new_tokens=trie.max_length,
        allowed_fn=allowed_by_trie,
        constraint_data=constraint,
        forced_tokens=forced,
        renormalize=renormalize,
      ),
    )


def rank_items(
  model: ItemLanguageModel,
  encoder_params,
  llm_params,
  cf_table: np.ndarray,
  prompt_encoder: PromptEncoder,
  prompts,
  trie: ItemTrie,
  *,
  batch_size: int,
  buckets,
  num_beams: int = DEFAULT_BEAMS,
  exclude=None,
  renormalize: bool = False,
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
    exclude: optional, per prompt, items the search may not spell (the
      user's seen items: then every list holds W unseen items, as a full
      ranking that removes seen items does).
    renormalize: each step's scores are a softmax over the digits the trie
      allows, not the whole vocabulary (``beam_search``).

  Returns:
    int32[N, W] item indices best first, -1 where a beam spelled no new item.
  """
  out = np.full((len(prompts), num_beams), -1, np.int32)
  for chunk, beams in item_beams(
    model,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    trie,
    batch_size=batch_size,
    buckets=buckets,
    num_beams=num_beams,
    exclude=exclude,
    renormalize=renormalize,
  ):
    ranked = ranked_items(trie, np.asarray(beams.tokens))
    out[chunk] = ranked[: len(chunk)]
  return out


def generate_texts(
  model: ItemLanguageModel,
  encoder_params,
  llm_params,
  cf_table: np.ndarray,
  prompt_encoder: PromptEncoder,
  prompts,
  *,
  batch_size: int,
  buckets,
  max_new_tokens: int,
) -> list[str]:
  """Greedy answers of text-task prompts (item description, user profile).

  Args:
    model, encoder_params, llm_params, cf_table, prompt_encoder: as for
      ``rank_items``.
    prompts: evaluation Prompts.
    batch_size: prompts per generation call.
    buckets: prompt length buckets.
    max_new_tokens: most answer tokens (EOS included), as in training.

  Returns:
    One decoded answer per prompt, stripped of surrounding whitespace.
  """
  out = [""] * len(prompts)
  eos = tuple(int(i) for i in prompt_encoder.tokenizer.eos_ids)
  for chunk, x, mask in _embedded_batches(
    model,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    batch_size,
    buckets,
  ):
    gen = generate(
      model.decoder,
      llm_params,
      prompt_embeddings=x,
      prompt_mask=mask,
      max_new_tokens=max_new_tokens,
      eos_ids=eos,
      pad_id=prompt_encoder.pad_id,
    )
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for row, n in enumerate(chunk):
      ids = [int(t) for t in tokens[row, : lengths[row]] if int(t) not in eos]
      out[n] = prompt_encoder.tokenizer.decode(ids).strip()
  return out


def text_metrics(generated, references, titles=None, embedder=None) -> dict:
  """{"SC": mean cosine, "SC_std", "title_accuracy" (when titles given)}.

  Args:
    generated: N generated texts.
    references: N reference texts.
    titles: N catalogue titles (item description), or None.
    embedder: a ``semantic.SentenceEmbedder`` (default: all-MiniLM-L6-v2).
  """
  sc = semantic.semantic_consistency(generated, references, embedder)
  out = {"SC": float(sc.mean()), "SC_std": float(sc.std())}
  if titles is not None:
    hits = semantic.title_matches(generated, titles)
    out["title_accuracy"] = float(hits.mean())
  out["prompts"] = len(generated)
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
