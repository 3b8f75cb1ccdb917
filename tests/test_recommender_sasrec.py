"""The recommender with SASRec listing the candidates the model re-ranks.

On a copy of ``served_workdir`` (tests/conftest.py) with a few-step SASRec
trained into it, so the shared workdir stays as the other tests expect.
"""

import shutil

import numpy as np
import pytest

from ilm_jax.pipeline import sasrec as sasrec_pipeline
from ilm_jax.serve.recommender import Recommender


@pytest.fixture(scope="module")
def sasrec_workdir(served_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sasrec_served") / "work"
  shutil.copytree(served_workdir, workdir)
  with pytest.raises(FileNotFoundError, match="no trained SASRec"):
    Recommender.from_workdir(workdir, retriever="sasrec")
  als = Recommender.from_workdir(workdir)
  config = als.config
  config.sasrec.train.num_steps = 4  # only its lists are under test
  sasrec_pipeline.train_sasrec(
    config, config.sasrec, als.split, workdir / sasrec_pipeline.STAGE_DIR
  )
  return workdir


@pytest.mark.slow
def test_sasrec_lists_the_candidates_and_the_model_reorders_them(
  sasrec_workdir,
):
  rec = Recommender.from_workdir(sasrec_workdir, retriever="sasrec")
  assert rec.retriever == "sasrec"
  # Serving restored the 4 trained steps and trained none itself.
  steps = sasrec_workdir / sasrec_pipeline.STAGE_DIR / "checkpoints"
  assert sorted(p.name for p in steps.iterdir() if p.name.isdigit()) == ["4"]
  user, k = 0, 6
  seen = set(rec.seen(user).tolist())
  recs = rec.recommend(user=user, k=k, mode="rerank")
  items = [r.item for r in recs]
  assert len(items) == k == len(set(items)) and not seen & set(items)
  # The candidates are SASRec's best unseen items for this history.
  model, params = rec.sasrec
  scores = sasrec_pipeline.history_scores(model, params, rec.seen(user))
  scores[list(seen)] = -np.inf
  n = int(rec.config.stage2.rerank.num_candidates)
  top_n = set(np.argsort(-scores, kind="stable")[:n].tolist())
  reranked = [r.item for r in recs if r.source == "rerank"]
  assert reranked and set(reranked) <= top_n
  # A new user needs no fold-in: their named items are the history.
  history = [rec.title(i) for i in sorted(seen)[:3]]
  new = rec.recommend(history=history, k=k, mode="rerank")
  assert len({r.item for r in new}) == k


def test_history_scores_equal_the_retrievers_full_ranking_scores(
  sasrec_workdir,
):
  """One user's history scored alone equals that user's row of the
  retriever the re-ranking evaluation uses."""
  rec = Recommender.from_workdir(sasrec_workdir, retriever="sasrec")
  model, params = rec.sasrec
  retriever = sasrec_pipeline.Retriever(model, params, rec.split, "test")
  for user in (0, 3):
    alone = sasrec_pipeline.history_scores(
      model, params, rec.split.history_all(user, "test")
    )
    np.testing.assert_allclose(
      alone,
      np.asarray(retriever.score_fn(np.array([user])))[0],
      rtol=1e-5,
      atol=1e-6,
    )


def test_unknown_retriever_is_refused(served_workdir):
  with pytest.raises(ValueError, match="retriever must be one of"):
    Recommender.from_workdir(served_workdir, retriever="bm25")
