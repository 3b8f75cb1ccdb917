"""Saves converted LLM weights as an orbax checkpoint and restores them sharded.

Layout of a converted checkpoint directory::

  llm_config.json   the LlmConfig (``LlmConfig.to_dict``)
  params/           orbax StandardCheckpointer tree of the Decoder's params

Restoring builds the parameter tree abstractly (``jax.eval_shape``), turns
its logical axis names into shardings on the given mesh, and lets orbax read
each array straight into its shards: no host ever holds a full replica.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import linen as nn

from ilm_jax import files
from ilm_jax.models.llm.config import LlmConfig
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.sharding.mesh import DEFAULT_RULES, tree_shardings

CONFIG_FILE = "llm_config.json"
PARAMS_DIR = "params"


def save_llm(directory: str | pathlib.Path, config: LlmConfig, params) -> None:
  """Writes ``config`` and ``params`` (numpy or jax arrays) to ``directory``.

  Raises:
    FileExistsError: the directory already holds a checkpoint.
  """
  directory = pathlib.Path(directory).absolute()
  if (directory / PARAMS_DIR).exists():
    raise FileExistsError(f"{directory / PARAMS_DIR} already exists")
  directory.mkdir(parents=True, exist_ok=True)
  files.write_json(directory / CONFIG_FILE, config.to_dict())
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / PARAMS_DIR, nn.unbox(params))
  checkpointer.wait_until_finished()


def read_llm_config(directory: str | pathlib.Path) -> LlmConfig:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found (not a converted LLM dir)")
  return LlmConfig.from_dict(files.read_json(path))


def abstract_params(config: LlmConfig, param_dtype=jnp.float32):
  """The Decoder's params as boxed ShapeDtypeStructs, allocating nothing."""
  decoder = Decoder(config, param_dtype=param_dtype)
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(decoder.init, jax.random.key(0), tokens)
  return variables["params"]


def param_shardings(
  config: LlmConfig, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES
):
  """NamedShardings of every parameter from its logical axis names."""
  specs = nn.get_partition_spec(abstract_params(config))
  return tree_shardings(specs, mesh, rules)


def restore_llm(
  directory: str | pathlib.Path,
  mesh: jax.sharding.Mesh | None = None,
  rules=DEFAULT_RULES,
  dtype=None,
) -> tuple[LlmConfig, dict]:
  """(config, params) of a converted checkpoint, as (sharded) jax arrays.

  Args:
    directory: written by ``save_llm`` (e.g. by launch/convert_checkpoint.py).
    mesh: arrays are restored sharded on it by the logical-axis ``rules``;
      None puts them on the default device.
    rules: logical-to-mesh axis rules.
    dtype: cast parameters to this dtype on restore (default: as saved).
  """
  directory = pathlib.Path(directory).absolute()
  config = read_llm_config(directory)
  checkpointer = ocp.StandardCheckpointer()
  saved = checkpointer.metadata(directory / PARAMS_DIR)
  saved = getattr(saved, "item_metadata", saved)
  abstract = nn.unbox(abstract_params(config))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  else:
    shardings = nn.unbox(param_shardings(config, mesh, rules))

  def target(leaf, saved_leaf, sharding):
    leaf_dtype = dtype or saved_leaf.dtype
    return jax.ShapeDtypeStruct(leaf.shape, leaf_dtype, sharding=sharding)

  targets = jax.tree.map(target, abstract, dict(saved), shardings)
  params = checkpointer.restore(directory / PARAMS_DIR, targets)
  return config, params
