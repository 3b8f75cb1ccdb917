"""Builds the device mesh and turns logical axis names into shardings.

Every module in ilm_jax annotates its parameters and activations with logical
axis names (``"embed"``, ``"vocab"``, ``"heads"``, ``"batch"`` ...). This file
is the only place that maps them onto physical mesh axes, so changing a
parallelism layout is a config edit, never a code edit.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from ilm_jax.experiment_config import MESH_RULES

# Physical axes, outermost first: pure data parallelism, parameter sharding
# (ZeRO-3 style, also a data axis for activations) and tensor parallelism.
MESH_AXES = ("data", "fsdp", "tensor")

# The default logical-axis rules (configs carry them as ``mesh.rules``).
DEFAULT_RULES = MESH_RULES


def make_mesh(
  shape: Sequence[int] | None = None,
  axis_names: Sequence[str] = MESH_AXES,
  devices: Sequence[jax.Device] | None = None,
) -> jax.sharding.Mesh:
  """Builds a mesh with Auto axis types (what Linen logical rules expect).

  Args:
    shape: devices per axis; -1 in one position takes what is left. ``None``
      puts every device on the first axis (pure data parallelism).
    axis_names: names of the mesh axes.
    devices: devices to use; all of ``jax.devices()`` by default.

  Returns:
    A ``jax.sharding.Mesh``.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if shape is None:
    shape = (n,) + (1,) * (len(axis_names) - 1)
  shape = list(shape)
  if len(shape) != len(axis_names):
    raise ValueError(
      f"mesh shape {tuple(shape)} has {len(shape)} axes but axis_names "
      f"{tuple(axis_names)} has {len(axis_names)}"
    )
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if n % known:
      raise ValueError(f"{n} devices do not divide into mesh shape {shape}")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(
      f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
      f"{n} are available"
    )
  auto = (jax.sharding.AxisType.Auto,) * len(axis_names)
  return jax.make_mesh(
    tuple(shape), tuple(axis_names), axis_types=auto, devices=devices
  )


def logical_to_sharding(
  logical_axes: Sequence[str | None],
  mesh: jax.sharding.Mesh,
  rules: Sequence[tuple[str, object]] = DEFAULT_RULES,
) -> NamedSharding:
  """The NamedSharding for an array annotated with logical axis names."""
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  return NamedSharding(mesh, _drop_missing_axes(spec, mesh))


def tree_shardings(
  logical_tree,
  mesh: jax.sharding.Mesh,
  rules: Sequence[tuple[str, object]] = DEFAULT_RULES,
):
  """Shardings for a tree of ``nn.LogicallyPartitioned`` / PartitionSpec leaves.

  Args:
    logical_tree: e.g. ``nn.get_partition_spec(abstract_variables)``: a tree
      whose leaves are logical PartitionSpecs.
    mesh: the mesh.
    rules: logical-to-mesh rules.

  Returns:
    A tree of NamedShardings with the same structure.
  """
  mesh_specs = nn.logical_to_mesh(logical_tree, rules)
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, _drop_missing_axes(spec, mesh)),
    mesh_specs,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
  """Shards the leading (batch) axis over every data-like mesh axis."""
  data_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  return NamedSharding(mesh, PartitionSpec(data_axes, *([None] * (ndim - 1))))


def host_to_global(value, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host value every process holds in full.

  Each process fills only its addressable shards (by slicing ``value``), so
  this also works on multi-host meshes where ``jax.device_put`` of a host
  array to a non-addressable sharding would not.
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(
    value.shape, sharding, lambda index: value[index]
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _drop_missing_axes(spec: PartitionSpec, mesh) -> PartitionSpec:
  """Removes mesh axes a rule names but this mesh lacks (e.g. a 1-D mesh)."""

  def keep(entry):
    if entry is None:
      return None
    if isinstance(entry, tuple):
      kept = tuple(a for a in entry if a in mesh.axis_names)
      return kept or None
    return entry if entry in mesh.axis_names else None

  return PartitionSpec(*(keep(e) for e in spec))
