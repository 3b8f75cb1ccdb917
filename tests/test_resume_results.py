"""Resume loses nothing: a pipeline interrupted in stage-1 training and in
stage-2 evaluation, then resumed, writes the same results.json as an
uninterrupted one (timings aside). ``ilm_jax.drills.resume.kill_drill`` does
the same with kill -9 at random moments of the :small run."""

import pytest
from tiny import stage2_config, tiny_bert_dir

from ilm_jax import files
from ilm_jax.data.stage1 import Stage1Batches
from ilm_jax.drills.resume import differences, without_timings
from ilm_jax.eval import stage2_tasks
from ilm_jax.pipeline import run as pipeline


class SimulatedKillError(Exception):
  """Stands for a kill at a chosen point."""


def _config(bert_dir):
  c = stage2_config(init="stage1")
  c.qformer.bert_path = str(bert_dir)
  c.qformer.embed_dim = 8
  s1, s2 = c.stage1, c.stage2
  s1.batch_size = 8  # one row per fake device
  s1.eval.batch_size, s1.eval.candidates = 64, 10
  # Two checkpoints per stage, on logging boundaries (as the :small budget).
  for train in (s1.train, s2.train):
    train.num_steps, train.warmup_steps = 4, 1
    train.checkpoint_every = train.log_every = 2
    train.progress_bar = False
  s2.evaluations = (
    "generate:sequential:valid:unseen",
    "text:description:-:unseen",
    "rerank:rerank:valid:unseen",
  )
  return c


def _interrupt_at(monkeypatch, cls, method, calls):
  """Makes the ``calls``-th call of ``cls.method`` raise SimulatedKillError."""
  original = getattr(cls, method)
  count = {"n": 0}

  def wrapped(*args, **kwargs):
    count["n"] += 1
    if count["n"] == calls:
      raise SimulatedKillError(f"{cls.__name__}.{method} call {calls}")
    return original(*args, **kwargs)

  monkeypatch.setattr(cls, method, wrapped)


@pytest.mark.slow
@pytest.mark.heavy  # four pipeline runs; launch/drills.py's kill drill too
def test_interrupted_and_resumed_pipeline_reports_the_same(
  tmp_path, monkeypatch
):
  config = _config(tiny_bert_dir(tmp_path / "bert", 32))
  pipeline.run(config, tmp_path / "full", "all")
  expected = files.read_json(tmp_path / "full" / "results.json")

  cut = tmp_path / "cut"
  interruptions = [
    # After stage 1's step-2 checkpoint (a stage resumed mid-way; stage 2
    # resumes through the same loop code).
    (Stage1Batches, "__next__", 3),
    # Stage 2 trained, not yet evaluated: a finished stage restarted.
    (stage2_tasks, "evaluate", 1),
  ]
  for cls, method, calls in interruptions:
    with monkeypatch.context() as patch:
      _interrupt_at(patch, cls, method, calls)
      with pytest.raises(SimulatedKillError):
        pipeline.run(config, cut, "all")
  pipeline.run(config, cut, "all")
  got = files.read_json(cut / "results.json")

  assert not differences(without_timings(expected), without_timings(got))
  # Training metrics survived the restarts (the 21 lost fields).
  assert "loss" in got["stage1"] and "loss" in got["stage2"]["train"]
  history = files.read_json(cut / "stage1" / "metrics.json")
  assert [r["step"] for r in history["train"]] == [2, 4]
  assert [r["step"] for r in history["eval"]] == [0, 4]
