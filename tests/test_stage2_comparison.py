"""The stage-2 comparison: variant configs, summary rows, launcher, a run."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from ilm_jax.eval.evaluations import parse
from ilm_jax.pipeline import stage2_comparison as C
from tests.tiny import stage2_config as _config


def test_variant_config_changes_stage2_fields_only():
  base = _config(init="stage1")  # as the recipes: ILM starts from stage 1
  rand = C.variant_config(base, "ilm-rand")
  assert (rand.stage2.variant, rand.stage2.init) == ("ilm", "random")
  assert C.variant_config(base, "text").stage2.variant == "text"
  assert C.variant_config(base, "ilm+retrieval").stage2.retrieval_weight > 0
  assert C.variant_config(base, "ilm-full-tokens").stage2.list_tokens == 0
  pooled = C.variant_config(base, "ilm-pooled-grounding").stage2
  assert pooled.grounding_tokens == "list" and pooled.init == "stage1"
  assert base.stage2.init == "stage1"  # the original is untouched
  assert rand.cf.to_dict() == base.cf.to_dict()
  assert rand.stage2.train.num_steps == base.stage2.train.num_steps
  with pytest.raises(ValueError, match="unknown stage-2 variant"):
    C.variant_config(base, "gpt")


def test_stage1_ablation_changes_only_its_losses_and_directory():
  base = _config(init="stage1")
  ablation = C.variant_config(base, "ilm-it-ii")
  assert ablation.stage1.losses == "it-ii"
  assert ablation.stage2.stage1_dir == "stage1_it-ii"
  a, b = ablation.to_dict(), base.to_dict()
  assert a["stage1"].pop("losses") != b["stage1"].pop("losses")
  assert a["stage2"].pop("stage1_dir") != b["stage2"].pop("stage1_dir")
  assert a == b


def test_compare_trains_each_ablation_its_own_stage1(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(
    C.pipeline,
    "run",
    lambda config, workdir, stage: calls.append(stage) or {"eval": {}},
  )
  monkeypatch.setattr(
    C.stage1,
    "run",
    lambda config, workdir, out_name: calls.append(
      (out_name, config.stage1.losses)
    ),
  )
  monkeypatch.setattr(
    C.stage2,
    "run",
    lambda config, workdir, out_name: (
      calls.append((out_name, config.stage2.stage1_dir)) or {"eval": {}}
    ),
  )
  C.compare(_config(), tmp_path, ("ilm-it", "ilm-it-ui"), "valid", "unseen")
  assert calls == [
    "eval",  # the shared stage 1 is not needed by ablations alone
    ("stage1_it", "it"),
    ("stage1_it-ui", "it-ui"),
    ("stage2_ilm-it", "stage1_it"),
    ("stage2_ilm-it-ui", "stage1_it-ui"),
  ]


def test_stage1_rows_summarise_the_runs_the_variants_start_from(tmp_path):
  evals = [
    {"step": 0, "i2t_recall_at_10": 0.0, "item_chance_at_10": 0.1},
    {"step": 5, "i2t_recall_at_10": 0.5, "item_chance_at_10": 0.1},
  ]
  for name in ("stage1", "stage1_it", "stage1_k16"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.json").write_text(
      json.dumps({"train": [], "eval": evals, "final": {}})
    )
  # ILM-rand, MLP and text start from no stage 1; ilm-k1's run is missing.
  variants = ("ilm", "ilm-rand", "mlp", "text", "ilm-it", "ilm-k1", "ilm")
  rows = C.stage1_rows(_config(), tmp_path, variants)
  assert list(rows) == ["stage1", "stage1_it"]
  assert rows["stage1_it"]["item-text R@10, trained"] == 0.5
  assert C.stage1_rows(_config(), tmp_path, ("ilm-rand", "text")) == {}


def test_query_sweep_variants_train_their_own_stage1_of_k_queries(
  tmp_path, monkeypatch
):
  base = _config(init="stage1")
  k4 = C.variant_config(base, "ilm-k4")
  assert (k4.qformer.num_queries, k4.stage2.stage1_dir) == (4, "stage1_k4")
  a, b = k4.to_dict(), base.to_dict()
  a["qformer"].pop("num_queries"), b["qformer"].pop("num_queries")
  a["stage2"].pop("stage1_dir"), b["stage2"].pop("stage1_dir")
  assert a == b
  assert sorted(C.QUERY_SWEEP.values()) == [1, 2, 4, 8, 16]
  calls = []
  monkeypatch.setattr(C.pipeline, "run", lambda *a: {"eval": {}})
  monkeypatch.setattr(
    C.stage1,
    "run",
    lambda config, workdir, out_name: calls.append(
      (out_name, config.qformer.num_queries)
    ),
  )
  monkeypatch.setattr(
    C.stage2,
    "run",
    lambda config, workdir, out_name: (
      calls.append((out_name, config.qformer.num_queries)) or {"eval": {}}
    ),
  )
  C.compare(_config(), tmp_path, ("ilm-k1", "ilm-k16"), "valid", "unseen")
  assert calls == [
    ("stage1_k1", 1),
    ("stage1_k16", 16),
    ("stage2_ilm-k1", 1),
    ("stage2_ilm-k16", 16),
  ]


def _entries(*declared):
  """{name: entry} of (declared entry, metrics[, more fields]) triples."""
  out = {}
  for name, metrics, *more in declared:
    (evaluation,) = parse(name)
    out[evaluation.name] = evaluation.entry(metrics=metrics, **dict(*more))
  return out


def test_summary_row_picks_the_requested_split_and_templates():
  results = {
    "train_seconds": 12.0,
    "start_step": 0,
    "evaluations": _entries(
      (
        "generate:sequential:test:unseen",
        {
          "filtered/HR@5": 0.25,
          "filtered/NDCG@10": 0.1,
          "unfiltered/HR@5": 0.5,
        },
        {"retrieval": {"filtered/HR@10": 0.3}},
      ),
      ("generate:sequential:valid:unseen", {"filtered/HR@5": 0.75}),
      (
        "text:description:-:unseen",
        {"SC": 0.4, "title_accuracy": 0.125},
      ),
      ("text:description:-:seen", {"SC": 0.9}),
      ("text:profile:-:unseen", {"SC": 0.6}),
    ),
  }
  row = C.summary_row(results, "test", "unseen")
  assert row == {
    "HR@5": 0.25,
    "NDCG@10": 0.1,
    "retrieval HR@10": 0.3,
    "SC description": 0.4,
    "SC profile": 0.6,
    "title accuracy": 0.125,
    "train s": 12.0,
  }
  assert C.summary_row(results, "test", "unseen", "unfiltered")["HR@5"] == 0.5
  # A run resumed at step 300 (e.g. only to evaluate again) trained for
  # part of its seconds or none: no training time is claimed for it.
  resumed = dict(results, start_step=300)
  assert "train s" not in C.summary_row(resumed, "test", "unseen")
  assert C.summary_row(dict(results, start_step=0), "test", "unseen")[
    "train s"
  ] == pytest.approx(12.0)
  # Results written before start_step was recorded cannot tell training
  # from a re-evaluation at the last step: no seconds claimed either.
  legacy = {k: v for k, v in results.items() if k != "start_step"}
  assert "train s" not in C.summary_row(legacy, "test", "unseen")
  assert C.summary_row(results, "valid", "seen") == {
    "SC description": 0.9,
    "train s": 12.0,
  }


def test_generation_pairs_compare_neighbours_user_by_user():
  def ranked(users, ranks):
    return {
      "evaluations": _entries(
        (
          "generate:sequential:test:unseen",
          {},
          {"user_ranks": {"users": users, "filtered": ranks}},
        )
      )
    }

  miss = 10**6
  results = {
    "ilm": ranked([0, 1, 2, 3], [0, 1, 2, 3]),  # every user hit in the top 5
    "ilm-rand": ranked([0, 1, 2, 3], [0, 1, miss, miss]),
    "mlp": ranked([0, 1, 2, 3], [0, 1, miss, miss]),
    "text": ranked([0, 1, 2, 4], [miss] * 4),  # other users: not paired
  }
  pairs = C.generation_pairs(results, "test", "unseen")
  assert list(pairs) == ["ilm - ilm-rand", "ilm-rand - mlp"]
  # Per-user HR@10 gains 0, 0, 1, 1: mean .5, SE std(ddof=1) / 2 = .2887.
  assert pairs["ilm - ilm-rand"]["HR@10"] == "+0.5000 ± 0.2887 (within 2 SE)"
  assert pairs["ilm-rand - mlp"]["HR@10"] == "+0.0000 ± 0.0000 (within 2 SE)"
  assert set(pairs["ilm - ilm-rand"]) == set(C.RANKING_KEYS)
  # Results from before ranks were recorded are left out, not an error.
  older = {"ilm": {"evaluations": {}}, "mlp": results["mlp"]}
  assert C.generation_pairs(older, "test", "unseen") == {}


def test_pairs_of_other_generated_tasks_are_labelled_by_task():
  def entry(task, ranks):
    return (
      f"generate:{task}:test:unseen",
      {"filtered/HR@10": float(np.mean(np.asarray(ranks) < 10))},
      {"user_ranks": {"users": [0, 1], "filtered": ranks}},
    )

  results = {
    "ilm": {
      "evaluations": _entries(
        entry("sequential", [0, 0]), entry("straightforward", [0, 20])
      )
    },
    "mlp": {"evaluations": _entries(entry("sequential", [0, 20]))},
    "text": {"evaluations": _entries(entry("straightforward", [20, 20]))},
  }
  tasks = ("sequential", "straightforward")
  pairs = C.generation_pairs(results, "test", "unseen", tasks)
  # Neighbours among the variants that ran each task.
  assert list(pairs) == ["ilm - mlp", "ilm - text, straightforward"]
  assert pairs["ilm - text, straightforward"]["HR@10"].startswith("+0.5000")
  baselines = {"popularity": {"test": {"users": [0, 1], "filtered": [0, 0]}}}
  against = C.baseline_pairs(results, baselines, "test", "unseen", tasks)
  assert list(against) == [
    "ilm - popularity",
    "mlp - popularity",
    "ilm - popularity, straightforward",
    "text - popularity, straightforward",
  ]
  # The summary row carries the other task's headline figures.
  row = C.summary_row(results["ilm"], "test", "unseen")
  assert row["straightforward HR@10"] == pytest.approx(0.5)


def test_baseline_pairs_compare_generation_with_full_rankings_per_user():
  results = {
    "ilm": {
      "evaluations": _entries(
        (
          "generate:sequential:test:unseen",
          {},
          # Users 3 and 1 in the order the evaluation listed them.
          {"user_ranks": {"users": [3, 1], "filtered": [0, 10**6]}},
        )
      )
    },
    "text": {"evaluations": {}},  # no ranks recorded: left out
  }
  baselines = {
    "popularity": {
      "test": {"users": [0, 1, 2, 3], "filtered": [0, 4, 0, 50]},
      "valid": {"users": [0, 1, 2, 3], "filtered": [0, 0, 0, 0]},
    },
    "als": {"valid": {"users": [0, 1, 2, 3], "filtered": [0, 0, 0, 0]}},
  }
  pairs = C.baseline_pairs(results, baselines, "test", "unseen")
  assert list(pairs) == ["ilm - popularity"]  # ALS has no test ranks
  # User 3: ILM hits at rank 0, popularity misses (50): gain +1; user 1:
  # ILM misses, popularity hits at rank 4: -1. Mean 0, SE sqrt(2) / sqrt(2).
  assert pairs["ilm - popularity"]["HR@10"] == "+0.0000 ± 1.0000 (within 2 SE)"
  assert set(pairs["ilm - popularity"]) == set(C.RANKING_KEYS)


def test_compare_rejects_a_setting_no_evaluation_declares(tmp_path):
  config = _config()  # the validation split, held-out templates
  with pytest.raises(ValueError, match="split 'test' is in no stage2.eval"):
    C.compare(config, tmp_path, ("text",), "test", "unseen")
  with pytest.raises(ValueError, match="templates 'seen' are in no"):
    C.compare(config, tmp_path, ("text",), "valid", "seen")


def test_launcher_help():
  out = subprocess.run(
    [sys.executable, str(REPO_ROOT / "launch" / "compare_stage2.py"), "--help"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  assert out.returncode in (0, 1), out.stderr
  words = ("--config", "--workdir", "--variants", "ilm-rand", "--split")
  for word in (*words, "--coordinator_address", "--[no]distributed"):
    assert word in out.stdout


@pytest.mark.slow
def test_compare_writes_table_json_and_plot(tmp_path):
  config = _config()
  config.stage2.evaluations = (
    "generate:sequential:valid:seen",
    "generate:sequential:valid:unseen",
    "text:description:-:seen",
    "text:description:-:unseen",
  )
  out = C.compare(config, tmp_path, ("ilm-rand", "text"), "valid", "unseen")
  assert set(out["rows"]) >= {"ilm-rand", "text", "als (all users)"}
  for name in ("ilm-rand", "text"):
    row = out["rows"][name]
    assert {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "SC description"} <= set(row)
    assert (tmp_path / f"stage2_{name}" / "results.json").exists()
  assert out["results"]["text"]["variant"] == "text"
  assert out["budget"]["steps"] == config.stage2.train.num_steps
  saved = json.loads((tmp_path / C.RESULTS_FILE).read_text())
  assert saved["rows"] == out["rows"]
  table = (tmp_path / C.TABLE_FILE).read_text()
  assert "| ilm-rand |" in table and "| text |" in table
  # Generation paired over the same users, neighbour by neighbour.
  assert list(saved["generation_pairs"]) == ["ilm-rand - text"]
  assert "| ilm-rand - text |" in table
  # ... and against each full-ranking baseline, from its per-user ranks.
  assert list(saved["baseline_pairs"]) == [
    f"{v} - {b}" for v in ("ilm-rand", "text") for b in ("popularity", "als")
  ]
  assert "| text - als |" in table
  # the chosen (split, templates) first, then every other evaluated one
  assert table.index(", unseen templates") < table.index(", seen templates")
  assert (tmp_path / C.PLOT_FILE).stat().st_size > 0
  with pytest.raises(ValueError, match="split"):
    C.compare(config, tmp_path, ("text",), "test", "unseen")


def test_report_only_rebuilds_the_table_from_saved_results(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(C.pipeline, "run", lambda *a: {"eval": {}})

  def fail(*args, **kwargs):
    raise AssertionError("report_only must not train")

  monkeypatch.setattr(C.stage2, "run", fail)
  monkeypatch.setattr(C.stage1, "run", fail)
  config = _config()
  saved = {
    "train_seconds": 3.0,
    "start_step": 0,
    "evaluations": _entries(
      ("generate:sequential:valid:unseen", {"filtered/HR@10": 0.25})
    ),
  }
  (tmp_path / "stage2_mlp").mkdir()
  (tmp_path / "stage2_mlp" / "results.json").write_text(json.dumps(saved))
  out = C.compare(config, tmp_path, ("mlp",), "valid", "unseen", True)
  assert out["rows"]["mlp"] == {"HR@10": 0.25, "train s": 3.0}
  # The table comes back too, for hosts that did not write the file.
  assert out["table"] == (tmp_path / C.TABLE_FILE).read_text()
  assert "| mlp |" in out["table"]
  with pytest.raises(FileNotFoundError, match="stage2_text"):
    C.compare(config, tmp_path, ("text",), "valid", "unseen", True)
  # Results of the layout before declared evaluations are refused, not
  # reported as empty rows.
  (tmp_path / "stage2_text").mkdir()
  old = {"eval": {"sequential/valid/unseen": {"filtered/HR@10": 0.25}}}
  (tmp_path / "stage2_text" / "results.json").write_text(json.dumps(old))
  with pytest.raises(ValueError, match="older layout"):
    C.compare(config, tmp_path, ("text",), "valid", "unseen", True)
