"""What each stage's state depends on: settings that train, not those that
only evaluate or pace the run."""

import numpy as np

from ilm_jax.cf.table import CFTable
from ilm_jax.experiment_config import get_config
from ilm_jax.pipeline import stage1, stage2
from ilm_jax.train import provenance


def _workdir(tmp_path, seed=0):
  table = np.random.default_rng(seed).normal(size=(7, 4)).astype(np.float32)
  CFTable(table, 3, 4).save(tmp_path / "cf")
  return tmp_path


def test_stage2_provenance_follows_training_settings_only(tmp_path):
  workdir = _workdir(tmp_path)
  params = {"adapter": {"kernel": np.ones((2, 3), np.float32)}}
  config = get_config("ml-latest-small")
  base = stage2._provenance(config, workdir, params)
  # Evaluation choices and the run's pace leave it unchanged.
  config.stage2.evaluations = ("rerank:rerank:valid:seen",)
  config.stage2.eval.max_users = 5
  config.stage2.rerank.max_users = 7
  config.stage2.train.num_steps = 999
  config.stage2.train.log_every = 1
  assert stage2._provenance(config, workdir, params) == base
  # What trains changes it, and the difference is named.
  config.stage2.train.learning_rate = 0.5
  config.stage2.rerank.labels = "identifiers"
  changed = provenance.differences(
    provenance.normalised(base),
    provenance.normalised(stage2._provenance(config, workdir, params)),
  )
  assert changed == [
    "stage2.rerank.labels: 'letters' -> 'identifiers'",
    "stage2.train.learning_rate: 0.003 -> 0.5",
  ]
  # So do the starting point and the CF table, by content.
  same = {"adapter": {"kernel": np.ones((2, 3), np.float32)}}
  other = {"adapter": {"kernel": np.zeros((2, 3), np.float32)}}
  assert provenance.tree_digest(same) == provenance.tree_digest(params)
  assert provenance.tree_digest(other) != provenance.tree_digest(params)
  before = stage2._provenance(config, workdir, params)["cf_table"]
  after = stage2._provenance(config, _workdir(tmp_path, seed=1), params)
  assert after["cf_table"] != before


def test_stage1_provenance_follows_the_cf_table_and_recipe(tmp_path):
  config = get_config("ml-latest-small")
  first = stage1._provenance(config, _workdir(tmp_path, seed=0))
  second = stage1._provenance(config, _workdir(tmp_path, seed=1))
  assert first["cf_table"] != second["cf_table"]
  config.stage1.train.num_steps = 5000
  assert stage1._provenance(config, tmp_path) == second
  config.stage1.batch_size = 64
  assert stage1._provenance(config, tmp_path)["stage1"]["batch_size"] == 64


def test_runs_recorded_before_a_field_existed_resume_on_its_old_value(tmp_path):
  workdir = _workdir(tmp_path)
  params = {"adapter": {"kernel": np.ones((2, 3), np.float32)}}
  config = get_config("ml-latest-small")
  config.dataset.indexing = "collaborative"
  config.dataset.balanced_tree = False
  current = provenance.normalised(stage2._provenance(config, workdir, params))
  # What a run from before both fields recorded: neither was in its config.
  old = {**current, "dataset": dict(current["dataset"])}
  old["stage2"] = dict(current["stage2"])
  del old["dataset"]["balanced_tree"], old["stage2"]["llm_activations"]
  assert provenance.differences(old, current) == []
  # Under values that train otherwise than such runs did, it stops.
  config.dataset.balanced_tree = True
  config.stage2.llm_activations = "bfloat16"
  assert provenance.differences(
    old, provenance.normalised(stage2._provenance(config, workdir, params))
  ) == [
    "dataset.balanced_tree: False -> True",
    "stage2.llm_activations: 'auto' -> 'bfloat16'",
  ]
  # A new field nobody registered is named, never assumed harmless.
  assert provenance.differences({"a": 1}, {"a": 1, "b": 2}) == [
    "b: '<absent>' -> 2"
  ]


def test_a_field_a_stage_no_longer_records_is_no_difference(tmp_path):
  config = get_config("ml-latest-small")
  config.dataset.indexing = "collaborative"
  config.dataset.balanced_tree = True
  # Stages that name no items leave the tree's shape out ...
  now = provenance.normalised(stage1._provenance(config, _workdir(tmp_path)))
  assert "balanced_tree" not in now["dataset"]
  assert "balanced_tree" in provenance.dataset_fields(
    config.dataset.to_dict(), identifiers=True
  )
  # ... and resume runs that recorded it while they still did.
  recorded = {**now, "dataset": {**now["dataset"], "balanced_tree": True}}
  assert provenance.differences(recorded, now) == []
  # Random identifiers do not read it either.
  config.dataset.indexing = "random"
  assert "balanced_tree" not in provenance.dataset_fields(
    config.dataset.to_dict(), identifiers=True
  )


def test_stage2_lists_from_an_inner_sasrec_record_its_recipe_and_steps(
  tmp_path,
):
  workdir = _workdir(tmp_path)
  params = {"adapter": {"kernel": np.ones((2, 3), np.float32)}}
  config = get_config("ml-latest-small")
  # Lists from the inner ALS alone: SASRec's settings train nothing here.
  als_only = stage2._provenance(config, workdir, params)
  assert provenance.INNER_SASREC not in als_only
  config.sasrec.dim = 16
  assert stage2._provenance(config, workdir, params) == als_only

  config.stage2.rerank.train_retrievers = ("als", "sasrec")
  base = provenance.normalised(stage2._provenance(config, workdir, params))
  assert base[provenance.INNER_SASREC]["dim"] == 16
  # More SASRec steps change the lists (SASRec's own record lets a finished
  # run grow); so does its recipe. Its logging pace does not.
  config.sasrec.train.log_every = 7
  assert provenance.normalised(stage2._provenance(config, workdir, params)) == (
    base
  )
  steps = int(config.sasrec.train.num_steps)
  config.sasrec.train.num_steps = steps + 300
  config.sasrec.dim = 32
  assert provenance.differences(
    base, provenance.normalised(stage2._provenance(config, workdir, params))
  ) == [
    "inner_sasrec.dim: 16 -> 32",
    f"inner_sasrec.num_steps: {steps} -> {steps + 300}",
  ]
  # A run recorded before the section existed resumes as before; a record
  # holding the section is compared field by field.
  older = {k: v for k, v in base.items() if k != provenance.INNER_SASREC}
  current = provenance.normalised(stage2._provenance(config, workdir, params))
  assert provenance.differences(older, current) == []
  partial = {**older, provenance.INNER_SASREC: {"dim": 32}}
  assert f"inner_sasrec.num_steps: '<absent>' -> {steps + 300}" in (
    provenance.differences(partial, current)
  )
