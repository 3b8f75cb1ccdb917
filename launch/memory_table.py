r"""Prints stage 2's memory per device for LLM shapes on mesh recipes.

Nothing is allocated and no accelerator is needed: every figure comes from
abstract shapes (``jax.eval_shape``, a traced ``jax.vjp``) and the
logical-axis sharding rules of ``ilm_jax/sharding/mesh.py`` applied on an
abstract mesh (``jax.sharding.AbstractMesh``) of the recipe's shape.

Columns (GiB per device):

* frozen LLM: each parameter's shard under the rules, at ``--llm_dtype``;
* trainable: the soft-token encoder (Q-Former, adapter, shared prompt) of
  the config, float32, sharded by the same rules;
* optimiser: AdamW's two float32 moments per trainable parameter, sharded
  as the parameters;
* activations: what the backward pass keeps of one training step's frozen
  LLM forward (its saved residuals, read from the traced ``jax.vjp`` with
  respect to the input embeddings, since gradients flow through the LLM to
  the soft tokens) for the config's global batch at its longest length
  bucket, in float32 (the LLM computes in float32), divided over the
  batch's data-parallel devices. Tensor parallelism is not subtracted, so
  it is an upper bound there; XLA's temporaries come on top.

Examples:
  # every LLM shape on every recipe, the :full (accelerator) config
  python launch/memory_table.py
  # Llama-3-8B on a v5e-32 pod slice
  python launch/memory_table.py --llm=llama3-8b --mesh=v5e-32
  # any mesh shape (data,fsdp,tensor) and per-device memory in GiB
  python launch/memory_table.py --llm=gemma-2b --mesh=2,4,1:16
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from absl import app, flags

from ilm_jax import console, experiment_config
from ilm_jax.models.llm.config import PRESETS
from ilm_jax.sharding import memory

_CONFIG = flags.DEFINE_string(
  "config",
  "ml-latest-small:full",
  "dataset:budget of ilm_jax.experiment_config.get_config whose stage 2 "
  "(batch, length buckets, Q-Former, shared prompt) is measured.",
)
_LLMS = flags.DEFINE_list(
  "llm",
  ["smollm2-135m", "gemma3-270m", "gemma-2b", "llama3-8b"],
  f"LLM presets: {', '.join(sorted(PRESETS))}.",
)
_MESHES = flags.DEFINE_list(
  "mesh",
  list(memory.RECIPES),
  f"Mesh recipes ({', '.join(memory.RECIPES)}) or data,fsdp,tensor[:GiB].",
)
_DTYPE = flags.DEFINE_enum(
  "llm_dtype", "bfloat16", ["bfloat16", "float32"], "Frozen LLM dtype."
)
_ACTIVATIONS = flags.DEFINE_enum(
  "llm_activations",
  "auto",
  ["auto", "bfloat16", "float32"],
  "Its activations' dtype (auto: --llm_dtype), as stage2.llm_activations.",
)
_REMAT = flags.DEFINE_enum(
  "remat",
  None,
  ["none", "block", "dots"],
  "What the backward pass recomputes, as stage2.remat (default: the config's).",
)


def main(argv):
  console.start(argv)
  dataset, _, budget = _CONFIG.value.partition(":")
  config = experiment_config.get_config(dataset, budget)
  try:
    meshes = [memory.parse_mesh(m) for m in _MESHES.value]
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[_DTYPE.value]
  s2 = config.stage2
  s2.llm_dtype = _DTYPE.value
  s2.llm_activations = _ACTIVATIONS.value
  if _REMAT.value is not None:
    s2.remat = _REMAT.value
  print(
    f"stage 2 of {_CONFIG.value}: global batch {s2.batch_size} x "
    f"{max(s2.length_buckets)} tokens, {s2.variant} encoder, frozen LLM in "
    f"{_DTYPE.value}, activations {s2.llm_activations}, remat {s2.remat}; "
    "GiB per device"
  )
  print(memory.markdown(memory.rows(config, _LLMS.value, meshes, dtype)))


if __name__ == "__main__":
  app.run(main)
