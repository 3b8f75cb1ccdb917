"""Config values checked before anything runs, each error naming its field.

A negative step count used to run nothing and report, a NaN learning rate
to save an all-NaN checkpoint and report perfect recall, ``eval.ks=(0,)`` to
report HR@0, ``batch_size=0`` to crash deep inside JAX, ``cf.alpha=nan`` to
fail only after a full ALS fit. ``check(config)`` rejects all of them in the
first second, with the field's dotted name, the value and what is allowed.
Imports no JAX, so launchers can call it before touching a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ilm_jax.eval import evaluations


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field."""


def _get(config: Mapping, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def _number(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
  return (
    lambda v: _number(v) and float(v).is_integer() and v >= lo,
    f"an integer >= {lo}",
  )


def _finite_at_least(lo: float, strict: bool = False):
  op = "> " if strict else ">= "
  return (
    lambda v: (
      _number(v) and math.isfinite(v) and (v > lo if strict else v >= lo)
    ),
    f"a finite number {op}{lo}",
  )


def _one_of(*choices):
  return (lambda v: v in choices, f"one of {choices}")


def _finite():
  return (lambda v: _number(v) and math.isfinite(v), "a finite number")


POSITIVE_INT = _int_at_least(1)
NON_NEGATIVE_INT = _int_at_least(0)
POSITIVE = _finite_at_least(0.0, strict=True)
NON_NEGATIVE = _finite_at_least(0.0)

# Training-loop fields, checked under both stage1.train and stage2.train.
_LOOP_RULES = {
  "num_steps": POSITIVE_INT,
  "learning_rate": POSITIVE,
  "warmup_steps": NON_NEGATIVE_INT,
  "end_learning_rate_ratio": NON_NEGATIVE,
  "weight_decay": NON_NEGATIVE,
  "adam_b1": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
  "adam_b2": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
  "grad_clip_norm": NON_NEGATIVE,
  "log_every": POSITIVE_INT,
  "eval_every": NON_NEGATIVE_INT,
  "checkpoint_every": POSITIVE_INT,
  "keep_checkpoints": POSITIVE_INT,
}

_RULES = {
  "dataset.kcore": _int_at_least(-1),
  "dataset.min_rating": _finite(),
  "dataset.max_history": POSITIVE_INT,
  "dataset.indexing": _one_of("random", "sequential", "collaborative"),
  "cf.dim": POSITIVE_INT,
  "cf.reg": NON_NEGATIVE,
  "cf.alpha": NON_NEGATIVE,
  "cf.sweeps": POSITIVE_INT,
  "cf.solver": _one_of("cholesky", "cg"),
  "cf.cg_steps": POSITIVE_INT,
  "eval.batch_size": POSITIVE_INT,
  "qformer.num_queries": (
    lambda v: _number(v) and float(v).is_integer() and 1 <= v <= 32,
    "an integer in [1, 32]",
  ),
  "qformer.num_cf_tokens": POSITIVE_INT,
  "qformer.cross_attention_freq": POSITIVE_INT,
  "qformer.embed_dim": POSITIVE_INT,
  "qformer.max_text_length": _int_at_least(3),
  "qformer.num_layers": NON_NEGATIVE_INT,
  # In-batch negatives need at least one other row.
  "stage1.batch_size": _int_at_least(2),
  "stage1.eval.k": POSITIVE_INT,
  "stage1.eval.candidates": _int_at_least(2),
  "stage1.eval.batch_size": POSITIVE_INT,
  "stage2.variant": _one_of("ilm", "mlp", "text"),
  "stage2.init": _one_of("stage1", "random"),
  "stage2.llm_dtype": _one_of("auto", "float32", "bfloat16"),
  "stage2.llm_activations": _one_of("auto", "float32", "bfloat16"),
  "stage2.remat": _one_of("none", "block", "dots"),
  "stage2.examples_per_task": POSITIVE_INT,
  "stage2.min_ranking_fraction": (
    lambda v: _number(v) and 0 <= v < 1,
    "a number in [0, 1)",
  ),
  "stage2.max_history": POSITIVE_INT,
  "stage2.max_answer_tokens": POSITIVE_INT,
  "stage2.batch_size": POSITIVE_INT,
  "stage2.soft_prompt": NON_NEGATIVE_INT,
  "stage2.shared_prompt": NON_NEGATIVE_INT,
  "stage2.list_tokens": NON_NEGATIVE_INT,
  "stage2.grounding_tokens": _one_of("entity", "list"),
  "stage2.answer_weighting": _one_of("token", "example"),
  "stage2.retrieval_weight": NON_NEGATIVE,
  "stage2.rerank.num_candidates": _int_at_least(2),
  "stage2.rerank.train_holdout": POSITIVE_INT,
  "stage2.rerank.examples_per_task": POSITIVE_INT,
  "stage2.rerank.batch_size": POSITIVE_INT,
  "stage2.rerank.order": _one_of("retriever", "shuffled"),
  "stage2.rerank.labels": _one_of("identifiers", "letters"),
  "stage2.eval.num_beams": POSITIVE_INT,
  "stage2.eval.batch_size": POSITIVE_INT,
}


def _present(config: Mapping, dotted: str) -> bool:
  try:
    _get(config, dotted)
  except (KeyError, AttributeError):
    return False
  return True


def check(config: Mapping) -> None:
  """Raises ConfigError for the first field whose value cannot run.

  Args:
    config: an experiment config (``ilm_jax.experiment_config``); fields it
      lacks are skipped, so partial configs (one stage's) can be checked.
  """
  rules = dict(_RULES)
  for stage in ("stage1", "stage2"):
    rules.update({f"{stage}.train.{k}": r for k, r in _LOOP_RULES.items()})
  for dotted, (ok, allowed) in rules.items():
    if not _present(config, dotted):
      continue
    value = _get(config, dotted)
    if not ok(value):
      raise ConfigError(f"config.{dotted} = {value!r}: must be {allowed}")
  if _present(config, "eval.ks"):
    ks = tuple(_get(config, "eval.ks"))
    if not ks or not all(POSITIVE_INT[0](k) for k in ks):
      raise ConfigError(
        f"config.eval.ks = {ks!r}: must be one or more integers >= 1"
      )
  if _present(config, "stage2.evaluations"):
    try:
      evaluations.parse(_get(config, "stage2.evaluations"))
    except ValueError as error:  # names the entry and the allowed values
      raise ConfigError(f"config.{error}") from None
  if _present(config, "stage2.length_buckets"):
    buckets = tuple(_get(config, "stage2.length_buckets"))
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 8:
      raise ConfigError(
        f"config.stage2.length_buckets = {buckets!r}: must be increasing "
        "lengths >= 8"
      )
