"""Memory per device of a stage-2 step, from abstract shapes only.

Nothing is allocated and no accelerator is needed: every figure comes from
abstract shapes (``jax.eval_shape``, a traced ``jax.vjp``) and the
logical-axis sharding rules of ``ilm_jax/sharding/mesh.py`` applied on an
abstract mesh (``jax.sharding.AbstractMesh``) of the recipe's shape.
``launch/memory_table.py`` prints the table; its docstring defines the
columns.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from ilm_jax.convert import frozen_llm, orbax_io
from ilm_jax.models.ilm import SoftTokenEncoder
from ilm_jax.models.llm.config import preset
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.pipeline.stage1 import qformer_shape
from ilm_jax.sharding.mesh import MESH_AXES

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class MeshRecipe:
  """A mesh shape (data, fsdp, tensor) and the memory of one device."""

  shape: tuple[int, int, int]
  device_gib: float
  device: str


# One GPU; eight GPUs of one host and a v5e-8 (one TPU VM host), the LLM
# sharded ZeRO-3 style over fsdp; a v5e-32 pod slice (8 hosts of 4 chips),
# 4-way data x 8-way fsdp.
RECIPES = {
  "1gpu": MeshRecipe((1, 1, 1), 80, "80 GB GPU"),
  "8gpu": MeshRecipe((1, 8, 1), 80, "80 GB GPU"),
  "v5e-8": MeshRecipe((1, 8, 1), 16, "TPU v5e chip"),
  "v5e-32": MeshRecipe((4, 8, 1), 16, "TPU v5e chip"),
}


def parse_mesh(text: str) -> tuple[str, MeshRecipe]:
  """A recipe name, or ``data,fsdp,tensor[:GiB per device]``."""
  if text in RECIPES:
    return text, RECIPES[text]
  shape_text, _, gib = text.partition(":")
  try:
    shape = tuple(int(s) for s in shape_text.split(","))
    memory = float(gib) if gib else float("nan")
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(
      f"--mesh={text}: name a recipe ({', '.join(RECIPES)}) or give three "
      "positive sizes data,fsdp,tensor, optionally :GiB per device"
    )
  return shape_text, MeshRecipe(shape, memory, "device")


def sharded_bytes(abstract_boxed, mesh: AbstractMesh, rules, dtype=None):
  """Bytes per device of a boxed abstract tree sharded by its logical axes.

  Args:
    abstract_boxed: ``jax.eval_shape`` of a Flax init (LogicallyPartitioned
      leaves).
    mesh: the abstract mesh.
    rules: logical-to-mesh axis rules.
    dtype: count every leaf at this dtype (default: its own).
  """
  specs = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  leaves = jax.tree.leaves(nn.unbox(abstract_boxed))
  spec_leaves = jax.tree.leaves(
    mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )
  total = 0
  for leaf, spec in zip(leaves, spec_leaves, strict=True):
    spec = PartitionSpec(
      *(
        (tuple(a for a in e if a in mesh.axis_names) or None)
        if isinstance(e, tuple)
        else e
        for e in spec
      )
    )
    shard = NamedSharding(mesh, spec).shard_shape(leaf.shape)
    itemsize = np.dtype(dtype or leaf.dtype).itemsize
    total += int(np.prod(shard)) * itemsize
  return total


def activation_bytes(decoder: Decoder, params, batch: int, length: int, answer):
  """Bytes the backward pass keeps of the LLM forward (whole batch).

  The saved residuals of ``jax.vjp`` with respect to the input embeddings
  (the LLM's own weights, arguments of the trace, are not counted).
  """
  width = decoder.config.embed_dim
  embeddings = jax.ShapeDtypeStruct((batch, length, width), jnp.float32)
  logits_at = jnp.broadcast_to(jnp.arange(answer), (batch, answer))

  def loss(llm_params, x):
    out = decoder.apply(
      {"params": llm_params}, embeddings=x, logits_at=logits_at
    )
    return jax.nn.logsumexp(out.logits.astype(jnp.float32), axis=-1).mean()

  def forward(llm_params, x):
    return jax.vjp(functools.partial(loss, llm_params), x)

  closed, shape = jax.make_jaxpr(forward, return_shape=True)(params, embeddings)
  jaxpr = closed.jaxpr
  count = len(jax.tree.leaves(shape[1]))
  arguments = set(jaxpr.invars)
  seen, total = set(), 0
  for var in jaxpr.outvars[len(jaxpr.outvars) - count :]:
    if type(var).__name__ == "Literal" or var in arguments or var in seen:
      continue  # literals, and the arguments themselves
    seen.add(var)
    total += int(np.prod(var.aval.shape)) * var.aval.dtype.itemsize
  return total


def rows(config, llm_names, meshes, llm_dtype) -> list[dict]:
  """One row per (LLM, mesh): GiB per device of each part."""
  s2 = config.stage2
  qformer = qformer_shape(config.qformer, config.cf.dim)
  batch, length = int(s2.batch_size), int(max(s2.length_buckets))
  out = []
  for name in llm_names:
    # A preset's name, or an LlmConfig (tests measure a tiny one).
    llm = preset(name) if isinstance(name, str) else name
    name = llm.name if not isinstance(name, str) else name
    abstract_llm = orbax_io.abstract_params(llm)
    encoder = SoftTokenEncoder(
      variant=s2.variant,
      llm_width=llm.embed_dim,
      qformer_config=qformer if s2.variant == "ilm" else None,
      mlp_hidden=s2.mlp_hidden,
      soft_prompt=s2.soft_prompt if s2.variant == "text" else s2.shared_prompt,
    )
    trainable = jax.eval_shape(
      encoder.init,
      jax.random.key(0),
      jnp.zeros((2, config.cf.dim)),
      jnp.zeros((2,), jnp.int32),
    )["params"]
    moments = jax.eval_shape(optax.adamw(1e-4).init, nn.unbox(trainable))
    moment_count = sum(
      int(np.prod(x.shape))
      for x in jax.tree.leaves(moments)
      if np.ndim(x) > 0 and x.dtype == jnp.float32
    )
    param_count = sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(trainable))
    )
    decoder = Decoder(
      llm,
      dtype=frozen_llm.activation_dtype(
        s2.get("llm_activations", "auto"), llm_dtype
      ),
      remat=s2.get("remat", "none"),
    )
    acts = activation_bytes(
      decoder, nn.unbox(abstract_llm), batch, length, s2.max_answer_tokens
    )
    for mesh_name, recipe in meshes:
      mesh = AbstractMesh(recipe.shape, MESH_AXES)
      data_parallel = recipe.shape[0] * recipe.shape[1]
      if batch % data_parallel:
        raise ValueError(
          f"stage2.batch_size {batch} does not split over the "
          f"{data_parallel} data-parallel devices of mesh {recipe.shape}"
        )
      rules = config.mesh.rules
      train_bytes = sharded_bytes(trainable, mesh, rules)
      parts = {
        "frozen LLM": sharded_bytes(abstract_llm, mesh, rules, llm_dtype),
        "trainable": train_bytes,
        # The moments are sharded as the parameters they follow.
        "optimiser": train_bytes * moment_count / max(param_count, 1),
        "activations": acts / data_parallel,
      }
      total = sum(parts.values())
      out.append(
        {
          "LLM": name,
          "params": f"{count_params(abstract_llm) / 1e9:.2f} B",
          "mesh": mesh_name,
          "data,fsdp,tensor": ",".join(map(str, recipe.shape)),
          **{k: v / GIB for k, v in parts.items()},
          "total": total / GIB,
          "device": f"{recipe.device_gib:g} GiB {recipe.device}",
          "fits": "yes" if total / GIB < 0.9 * recipe.device_gib else "no",
        }
      )
  return out


def count_params(abstract_boxed) -> int:
  leaves = jax.tree.leaves(nn.unbox(abstract_boxed))
  return sum(int(np.prod(x.shape)) for x in leaves)


def markdown(table: list[dict]) -> str:
  keys = list(table[0])
  lines = [
    "| " + " | ".join(keys) + " |",
    "|"
    + "|".join("---" if k in ("LLM", "mesh") else "---:" for k in keys)
    + "|",
  ]
  for row in table:
    cells = [
      f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
