"""Experiment configs: every file loads, budgets mean the same everywhere."""

import importlib.util
import json
import subprocess
import sys

import pytest

from ilm_jax import experiment_config as EC
from ilm_jax.data import DATASETS
from ilm_jax.eval.evaluations import parse
from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.py"))


def _load(path, arg=""):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads_under_every_budget(path):
  for budget in ("", *EC.BUDGETS):
    c = _load(path, budget)
    assert c.dataset.name in DATASETS
    parse(c.stage2.evaluations)  # every declared evaluation is valid
  # No suffix is the CPU recipe in every file.
  assert _load(path).to_dict() == _load(path, "cpu").to_dict()
  with pytest.raises(ValueError, match="unknown config variant 'huge'"):
    _load(path, "huge")
  with pytest.raises(ValueError, match="unknown config argument"):
    _load(path, "steps=3")


def test_budgets_differ_only_in_budget_fields_across_datasets():
  for budget in EC.BUDGETS:
    a = _load(REPO_ROOT / "configs" / "default.py", budget).to_dict()
    b = _load(REPO_ROOT / "configs" / "ml100k.py", budget).to_dict()
    assert a.pop("dataset")["name"] != b.pop("dataset")["name"]
    assert a == b


def test_budgets_are_ordered_by_size():
  cpu, small, accel, full = (
    _load(REPO_ROOT / "configs" / "default.py", b) for b in EC.BUDGETS
  )
  assert cpu.stage2.train.num_steps == EC.CPU_STAGE2_STEPS
  assert (
    full.stage2.train.num_steps
    > accel.stage2.train.num_steps
    > cpu.stage2.train.num_steps
    > small.stage2.train.num_steps
  )
  # The accelerator run: full shapes and data, collaborative identifiers.
  assert accel.qformer.to_dict() == full.qformer.to_dict()
  assert accel.dataset.max_users == -1
  assert accel.dataset.indexing == "collaborative"
  assert accel.stage2.eval.trie_softmax and not cpu.stage2.eval.trie_softmax
  # Stage 1 at the default recipe, which aligns item text on ML-100K.
  assert accel.stage1.to_dict() == full.stage1.to_dict()
  assert (
    full.stage1.train.num_steps
    > cpu.stage1.train.num_steps
    > small.stage1.train.num_steps
  )
  assert full.qformer.num_layers == 0  # every MiniLM layer
  assert small.dataset.max_users == 300 and cpu.dataset.max_users == -1


# What stage 2 evaluated before evaluations were declared: item tasks x
# splits x template sets (beam search), text tasks x template sets,
# re-ranking splits x tasks x template sets.
FULL_EVALUATIONS = (
  "generate:sequential:valid:seen",
  "generate:sequential:valid:unseen",
  "generate:sequential:test:seen",
  "generate:sequential:test:unseen",
  "generate:straightforward:valid:seen",
  "generate:straightforward:valid:unseen",
  "generate:straightforward:test:seen",
  "generate:straightforward:test:unseen",
  "generate:conversational:valid:seen",
  "generate:conversational:valid:unseen",
  "generate:conversational:test:seen",
  "generate:conversational:test:unseen",
  "text:description:-:seen",
  "text:description:-:unseen",
  "text:profile:-:seen",
  "text:profile:-:unseen",
  "rerank:rerank:valid:seen",
  "rerank:rerank:valid:unseen",
  "rerank:rerank_conversational:valid:seen",
  "rerank:rerank_conversational:valid:unseen",
  "rerank:rerank:test:seen",
  "rerank:rerank:test:unseen",
  "rerank:rerank_conversational:test:seen",
  "rerank:rerank_conversational:test:unseen",
)
# Re-ranking of ALS's candidates, then the same of SASRec's.
FULL_EVALUATIONS += tuple(
  f"{e}:sasrec" for e in FULL_EVALUATIONS if e.startswith("rerank:")
)
# The :small recipe: test split, held-out templates; sequential generation,
# both text tasks, re-ranking of ALS's candidates (the CPU and accelerator
# recipes then re-rank SASRec's too).
SMALL_EVALUATIONS = (
  "generate:sequential:test:unseen",
  "text:description:-:unseen",
  "text:profile:-:unseen",
  "rerank:rerank:test:unseen",
)


@pytest.mark.parametrize(
  "budget, want",
  [
    ("full", FULL_EVALUATIONS),
    ("cpu", (*SMALL_EVALUATIONS, "rerank:rerank:test:unseen:sasrec")),
    ("small", SMALL_EVALUATIONS),
    (
      "accel",
      (
        *SMALL_EVALUATIONS,
        "rerank:rerank:test:unseen:sasrec",
        "generate:straightforward:test:unseen",
      ),
    ),
  ],
)
def test_declared_evaluations_of_each_budget(budget, want):
  c = _load(REPO_ROOT / "configs" / "ml100k.py", budget)
  assert tuple(c.stage2.evaluations) == want
  # Names are the declared entries, in declared order.
  assert tuple(e.name for e in parse(c.stage2.evaluations)) == want


def test_full_stage2_defaults_evaluate_every_held_out_user():
  c = _load(REPO_ROOT / "configs" / "ml100k.py", "full")
  assert c.stage2.eval.max_users == -1  # every held-out user
  assert c.stage2.max_history == c.dataset.max_history == 20


def test_generic_config_names_dataset_and_budget():
  c = _load(REPO_ROOT / "configs" / "ilm.py", "dataset=ml-1m,budget=small")
  want = EC.get_config("ml-1m", "small")
  assert c.to_dict() == want.to_dict()
  assert c.dataset.name == "ml-1m" and c.dataset.max_users == 300
  assert EC.parse_arg("") == {"budget": "cpu"}
  assert EC.parse_arg("full") == {"budget": "full"}


def test_both_stages_are_shaped_alike():
  c = EC.base_config()
  for stage in (c.stage1, c.stage2):
    assert set(stage.train) == set(EC.loop_config())
    assert "eval" in stage
  # Loop fields live only under train.
  assert "num_steps" not in c.stage1 and "learning_rate" not in c.stage1


def test_parsing_a_config_imports_no_jax():
  code = (
    "import importlib.util, json, sys\n"
    f"path = {str(CONFIG_FILES[0])!r}\n"
    "spec = importlib.util.spec_from_file_location('c', path)\n"
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
    "m.get_config('full'); m.get_config('small')\n"
    "heavy = ('jax', 'flax', 'orbax', 'optax', 'tensorflow')\n"
    "print(json.dumps([n for n in sys.modules if n.split('.')[0] in heavy]))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO_ROOT,
  )
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_sasrec_is_a_baseline_of_the_cpu_recipe_not_of_small():
  """The main job's baseline table has SASRec beside popularity and ALS;
  the few-minute :small pipeline leaves it out."""
  default = REPO_ROOT / "configs" / "default.py"
  assert _load(default, "cpu").eval.baselines == EC.BASELINES
  assert "sasrec" in EC.BASELINES
  assert _load(default, "small").eval.baselines == ("popularity", "als")
