"""AdamW with linear warmup and cosine decay, and declarative freezing.

Freezing is a config regex over parameter paths (big_vision style): matching
parameters get zero updates and no optimiser moments. Parameters that must
never train (the stage-2 LLM) should not be passed to the loop at all.
"""

from __future__ import annotations

import re

import jax
import optax

TRAIN = "train"
FROZEN = "frozen"


def param_path(path) -> str:
  """'a/b/c' from a jax key path (what freeze and decay regexes match)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``learning_rate`` then cosine decay to ``end_lr``.

  Args:
    config: fields ``learning_rate``, ``warmup_steps``, ``num_steps``,
      ``end_learning_rate_ratio`` (end lr as a fraction of the peak).
  """
  peak = float(config.learning_rate)
  warmup = int(config.warmup_steps)
  total = max(int(config.num_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=total,
    end_value=peak * float(config.end_learning_rate_ratio),
  )


def frozen_labels(params, freeze_regex: str):
  """TRAIN / FROZEN per leaf: FROZEN where the path matches the regex."""
  pattern = re.compile(freeze_regex) if freeze_regex else None
  return jax.tree_util.tree_map_with_path(
    lambda p, _: (
      FROZEN if pattern is not None and pattern.search(param_path(p)) else TRAIN
    ),
    params,
  )


def make_optimizer(config, params) -> optax.GradientTransformation:
  """The optimiser a loop config describes.

  Args:
    config: ``learning_rate``, ``warmup_steps``, ``num_steps``,
      ``end_learning_rate_ratio``, ``weight_decay``, ``adam_b1``,
      ``adam_b2``, ``grad_clip_norm`` (0 = off), ``freeze_regex`` ('' = none),
      ``no_decay_regex`` (paths that skip weight decay).
    params: the trainable params (for masks).

  Returns:
    An optax GradientTransformation.
  """
  no_decay = re.compile(str(config.no_decay_regex))
  decay_mask = jax.tree_util.tree_map_with_path(
    lambda p, _: not no_decay.search(param_path(p)), params
  )
  chain = []
  if float(config.grad_clip_norm) > 0:
    chain.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  chain.append(
    optax.adamw(
      learning_rate_schedule(config),
      b1=float(config.adam_b1),
      b2=float(config.adam_b2),
      weight_decay=float(config.weight_decay),
      mask=decay_mask,
    )
  )
  optimizer = optax.chain(*chain)
  regex = str(config.get("freeze_regex", "") or "")
  if not regex:
    return optimizer
  labels = frozen_labels(params, regex)
  if FROZEN not in jax.tree.leaves(labels):
    raise ValueError(f"freeze_regex {regex!r} matches no parameter")
  return optax.multi_transform(
    {TRAIN: optimizer, FROZEN: optax.set_to_zero()}, labels
  )
