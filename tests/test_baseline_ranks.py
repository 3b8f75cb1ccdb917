"""The full-ranking baselines keep every user's rank beside their metrics."""

import numpy as np
import pytest

from ilm_jax.eval import metrics as M
from ilm_jax.pipeline import baselines
from tests.tiny import stage2_config, write_random_cf_table


def test_baselines_write_per_user_ranks_that_give_back_their_metrics(
  tmp_path,
):
  config = stage2_config()
  write_random_cf_table(config, tmp_path)
  results = baselines.run_baselines(config, tmp_path)
  ranks = baselines.read_user_ranks(tmp_path, ("popularity", "als", "sasrec"))
  assert set(ranks) == {"popularity", "als"}  # SASRec did not run here
  for model in ("popularity", "als"):
    for split_name in config.eval.splits:
      saved = ranks[model][split_name]
      filtered = results[model][split_name]["filtered"]
      assert saved["users"] == list(range(filtered["users"]))
      again = M.metrics_from_ranks(np.asarray(saved["filtered"]), (5, 10))
      for key in ("HR@5", "HR@10", "NDCG@10"):
        assert again[key] == pytest.approx(filtered[key])
