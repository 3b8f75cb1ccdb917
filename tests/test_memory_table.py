"""launch/memory_table.py: memory per device from abstract shapes only."""

import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from ilm_jax import experiment_config
from ilm_jax.convert.frozen_llm import tiny_config
from ilm_jax.sharding import memory as memory_table

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_parts_follow_the_sharding_rules():
  config = experiment_config.get_config("ml-latest-small", "small")
  llm = tiny_config()
  meshes = [memory_table.parse_mesh(m) for m in ("1,1,1:16", "2,4,1:16")]
  one, eight = memory_table.rows(config, [llm], meshes, ml_dtypes.bfloat16)
  # bfloat16 weights, all on one device (norms are the 1% left over).
  tables = 1 if llm.tie_embeddings else 2
  assert one["frozen LLM"] * memory_table.GIB == pytest.approx(
    2 * tables * llm.vocab_size * llm.embed_dim + _blocks(llm), rel=0.01
  )
  # fsdp=4 splits every matrix along its embed axis; norms stay whole.
  assert eight["frozen LLM"] < one["frozen LLM"] / 3
  # Two float32 AdamW moments per trainable parameter.
  assert one["optimiser"] == pytest.approx(2 * one["trainable"], rel=1e-3)
  # The batch's activations split over the 8 data-parallel devices.
  assert one["activations"] > 0
  assert eight["activations"] == pytest.approx(one["activations"] / 8)
  total = sum(one[k] for k in ("frozen LLM", "trainable", "optimiser"))
  assert one["total"] == pytest.approx(total + one["activations"])
  assert "| LLM |" in memory_table.markdown([one, eight])


def _blocks(llm) -> int:
  """bfloat16 bytes of the attention and MLP matrices of every layer."""
  d, h, k, hd, f = (
    llm.embed_dim,
    llm.num_heads,
    llm.num_kv_heads,
    llm.head_dim,
    llm.mlp_dim,
  )
  per_layer = d * (h + 2 * k) * hd + h * hd * d + 3 * d * f
  return 2 * llm.num_layers * per_layer


def test_mesh_flags_are_checked():
  assert memory_table.parse_mesh("v5e-32")[1].shape == (4, 8, 1)
  name, recipe = memory_table.parse_mesh("2,2,2:40")
  assert recipe.shape == (2, 2, 2) and recipe.device_gib == 40
  with pytest.raises(ValueError, match="data,fsdp,tensor"):
    memory_table.parse_mesh("8")
  assert np.isnan(memory_table.parse_mesh("1,1,1")[1].device_gib)


def test_command_rejects_a_bad_mesh_naming_the_flag():
  done = subprocess.run(
    [sys.executable, "launch/memory_table.py", "--mesh=3"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode != 0 and "--mesh=3" in done.stderr
