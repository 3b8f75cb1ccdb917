"""Bad config values fail before anything runs, naming the field."""

import importlib.util

import pytest

from ilm_jax import config_checks
from ilm_jax import experiment_config as EC
from ilm_jax.pipeline import run as pipeline
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.py")))
@pytest.mark.parametrize("budget", EC.BUDGETS)
def test_every_shipped_config_passes(path, budget):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_checks.check(module.get_config(budget))


# The wrong-results-with-exit-0 cases of the reliability drills, and others
# that used to fail late.
@pytest.mark.parametrize(
  "field, value, message",
  [
    ("stage1.train.learning_rate", float("nan"), "finite number > 0"),
    ("stage1.train.num_steps", -3, "integer >= 1"),
    ("stage2.train.num_steps", 0, "integer >= 1"),
    ("stage2.batch_size", 0, "integer >= 1"),
    ("stage1.batch_size", 1, "integer >= 2"),
    ("cf.alpha", float("nan"), "finite number >= 0"),
    ("cf.solver", "lu", "one of"),
    ("stage2.rerank.order", "random", "one of"),
    ("qformer.num_queries", 64, r"\[1, 32\]"),
    ("stage2.train.adam_b2", 1.0, r"\[0, 1\)"),
  ],
)
def test_bad_value_is_named(field, value, message):
  config = EC.get_config("ml-latest-small", "small")
  node = config
  *parents, last = field.split(".")
  for key in parents:
    node = node[key]
  node[last] = value
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.check(config)
  assert str(info.value).startswith(f"config.{field} = ")


def test_cut_offs_and_buckets():
  config = EC.get_config("ml-latest-small")
  config.eval.ks = (0,)
  with pytest.raises(config_checks.ConfigError, match=r"config.eval.ks"):
    config_checks.check(config)
  config = EC.get_config("ml-latest-small")
  config.stage2.length_buckets = (224, 112)
  with pytest.raises(config_checks.ConfigError, match="increasing"):
    config_checks.check(config)


def test_pipeline_refuses_before_touching_the_workdir(tmp_path):
  config = EC.get_config("ml-latest-small", "small")
  config.stage1.train.learning_rate = float("nan")
  workdir = tmp_path / "never"
  with pytest.raises(config_checks.ConfigError, match="learning_rate"):
    pipeline.run(config, workdir, "all")
  assert not workdir.exists()
