"""The recommender API and the chat demo on a trained workdir.

Both use ``served_workdir`` (tests/conftest.py): the ``:small`` pipeline,
reduced to seconds (its docstring says how and why), trained once per
session.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CHAT_SCRIPT = REPO_ROOT / "tests" / "data" / "chat.txt"
CHAT_GOLDEN = REPO_ROOT / "tests" / "data" / "chat_golden.txt"
CHAT_K = 3
_RANKED = re.compile(r"^\s+\d+\. .+  \[id [^\]]+\]")


@pytest.fixture(scope="module")
def recommender(served_workdir):
  from ilm_jax.serve.recommender import Recommender

  return Recommender.from_workdir(served_workdir)


def _popular_titles(recommender, n):
  order = sorted(
    range(recommender.num_items), key=lambda i: -recommender.popularity[i]
  )
  return [recommender.title(i) for i in order[:n]]


@pytest.mark.parametrize("mode", ["rerank", "generate"])
def test_recommend_gives_k_distinct_unseen_items_the_same_twice(
  recommender, mode
):
  history = _popular_titles(recommender, 3)
  k = 6
  first = recommender.recommend(
    history=history, wish="a comedy", k=k, mode=mode
  )
  again = recommender.recommend(
    history=history, wish="a comedy", k=k, mode=mode
  )
  assert first == again
  items = [r.item for r in first]
  assert len(items) == k == len(set(items))
  assert all(0 <= i < recommender.num_items for i in items)
  seen = {recommender.find(t).item for t in history}
  assert not seen & set(items)
  assert all(r.title == recommender.title(r.item) for r in first)
  # The model chose the head of the list, not the retriever.
  assert first[0].source == mode


@pytest.mark.parametrize("trie_softmax", [False, True])
def test_generate_searches_as_the_workdir_was_evaluated(
  recommender, monkeypatch, trie_softmax
):
  from ilm_jax.eval import generative

  calls = []
  search = generative.rank_items

  def spy(*args, **kwargs):
    calls.append(kwargs["renormalize"])
    return search(*args, **kwargs)

  monkeypatch.setattr(generative, "rank_items", spy)
  eval_config = recommender._c.eval
  monkeypatch.setitem(eval_config, "trie_softmax", trie_softmax)
  recs = recommender.recommend(
    history=_popular_titles(recommender, 2), k=4, mode="generate"
  )
  assert calls == [trie_softmax]
  assert len({r.item for r in recs}) == 4


def test_known_user_never_gets_what_they_had_and_disliked_items_stay_out(
  recommender,
):
  seen = set(recommender.seen(0).tolist())
  recs = recommender.recommend(user=0, k=5)
  assert len(recs) == 5 and not seen & {r.item for r in recs}
  disliked = recs[0].item
  again = recommender.recommend(user=0, k=5, disliked=[disliked])
  assert disliked not in {r.item for r in again}
  # Without any item, a new user gets the popularity order.
  cold = recommender.recommend(k=3)
  assert [r.source for r in cold] == ["popularity"] * 3


def test_new_user_gets_a_folded_in_vector_not_popularity(recommender):
  history = _popular_titles(recommender, 2)
  recs = recommender.recommend(history=history, k=15, mode="rerank")
  # Past the re-ranked candidates the retriever's own order shows.
  assert "retriever" in {r.source for r in recs}
  assert isinstance(recommender.describe(recs[0].item), str)
  assert isinstance(recommender.profile(history=history), str)


def _run_chat(workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "chat.py"),
      f"--workdir={workdir}",
      f"--script={CHAT_SCRIPT}",
      f"--k={CHAT_K}",
      "--compilation_cache=",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO_ROOT,
    env=env,
  )


def _golden_view(stdout: str) -> str:
  """What must not change: every line but the model's free text and the
  header naming the temporary workdir."""
  keep = [
    line
    for line in stdout.splitlines()
    if not line.strip().startswith("why:") and not line.startswith("ILM of")
  ]
  return "\n".join(keep) + "\n"


@pytest.mark.slow
def test_chat_script_prints_k_titles_per_turn_as_the_golden(served_workdir):
  """Replays tests/data/chat.txt; ``ILM_UPDATE_GOLDEN=1`` rewrites the
  golden file (tests/data/chat_golden.txt) from this run."""
  done = _run_chat(served_workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  turns = done.stdout.split("\n> ")[1:]
  script_turns = [
    line
    for line in CHAT_SCRIPT.read_text().splitlines()
    if line.strip() and not line.startswith("#")
  ]
  assert len(turns) == len(script_turns) >= 3
  for turn in turns:
    ranked = [line for line in turn.splitlines() if _RANKED.match(line)]
    assert len(ranked) == CHAT_K, turn
    assert sum("why:" in line for line in turn.splitlines()) == CHAT_K
  assert 'typed "' in done.stdout  # the misspelt title was resolved
  view = _golden_view(done.stdout)
  if os.environ.get("ILM_UPDATE_GOLDEN"):
    CHAT_GOLDEN.write_text(view)
  assert view == CHAT_GOLDEN.read_text()
