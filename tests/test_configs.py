"""Experiment configs: every file loads, variants change what they claim."""

import importlib.util

import pytest

from ilm_jax.data import DATASETS
from ilm_jax.train import stage2
from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.py"))


def _load(path, variant=""):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads_in_every_variant(path):
  for variant in ("", "cpu", "small"):
    c = _load(path, variant)
    assert c.dataset.name in DATASETS
    assert set(c.stage2.eval.splits) <= {"valid", "test"}
  with pytest.raises(ValueError, match="unknown config variant"):
    _load(path, "huge")


def test_full_stage2_defaults_report_both_splits_and_template_sets():
  c = _load(REPO_ROOT / "configs" / "ml100k.py")
  assert tuple(c.stage2.eval.splits) == ("valid", "test")
  assert tuple(c.stage2.eval.templates) == ("seen", "unseen")
  assert c.stage2.eval.max_users == -1  # every held-out user
  assert c.stage2.max_history == c.dataset.max_history == 20


def test_cpu_budget_is_the_main_job_recipe_on_any_dataset():
  default = _load(REPO_ROOT / "configs" / "default.py")
  ml100k = _load(REPO_ROOT / "configs" / "ml100k.py", "cpu")
  assert default.stage2.train.num_steps == stage2.CPU_STEPS
  # Same budget, different data: only the dataset fields differ.
  a, b = default.to_dict(), ml100k.to_dict()
  assert a.pop("dataset")["name"] != b.pop("dataset")["name"]
  assert a == b
  # The accelerator variant of the default keeps the full-size stage 2.
  full = _load(REPO_ROOT / "configs" / "default.py", "full")
  assert full.stage2.train.num_steps > stage2.CPU_STEPS
  assert full.qformer.num_layers == 0  # every MiniLM layer
