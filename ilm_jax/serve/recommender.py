"""The recommender API over a trained workdir.

``Recommender.from_workdir(path)`` restores the trained stage-2 model, the
CF table, the catalogue and the tokenizer (``restore``). ``recommend``
answers a request the way the model was evaluated:

* **Retrieval.** ``retriever="als"`` (the default, as training lists): the
  user's CF vector (their row of the table, or, for a new user known only
  by the items they name, the ALS fold-in of those items, ``fold_in``)
  scores every item by dot product. ``retriever="sasrec"``: the workdir's
  trained SASRec (``workdir/sasrec``) reads the user's history, oldest
  first, and scores every item; a new user needs no fold-in. What the user
  has seen or disliked is removed. Without any item the catalogue's
  popularity order stands in.
* **mode="rerank"** (the evaluated recipe): the model scores the top N
  candidates (``stage2.rerank.num_candidates``) in one forward pass and
  reorders them; items past N keep the retriever's order. The prompt is
  the re-ranking task's first training template, or the conversational
  re-ranking one when a wish is given.
* **mode="generate"**: trie-constrained beam search over the whole
  catalogue, seen and disliked items cut from the trie
  (``decode.item_trie.without_items``); the sequential prompt, or the
  conversational one with a wish. Fewer than k distinct items are topped up
  from the retriever's order (``Recommendation.source`` says which).

A new user takes one extra user row of the CF table (row ``U``, after the
trained users): the soft-token encoder reads users from the table like any
user, so the folded-in vector reaches the LLM the way a trained user's
does. Every call is deterministic: greedy decoding, fixed templates, ties
broken by item index.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from ilm_jax.data import prompts as P
from ilm_jax.data.stage2.encoding import PromptEncoder
from ilm_jax.decode.item_trie import without_items
from ilm_jax.eval import generative
from ilm_jax.eval.trained_ilm import TrainedIlm
from ilm_jax.pipeline import sasrec as sasrec_pipeline
from ilm_jax.rerank import evaluate as rerank_eval
from ilm_jax.serve import restore as restore_lib
from ilm_jax.serve.fold_in import fold_in
from ilm_jax.serve.titles import Match, TitleIndex

MODES = ("rerank", "generate")
# Who lists the candidates the model re-ranks.
RETRIEVERS = ("als", "sasrec")


def _check_retriever(retriever: str) -> None:
  if retriever not in RETRIEVERS:
    raise ValueError(
      f"retriever must be one of {RETRIEVERS}, got {retriever!r}"
    )


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """One recommended item.

  Attributes:
    item: the item index (0 .. I - 1).
    item_id: the dataset's own id of the item (e.g. a MovieLens movieId).
    title: its catalogue title.
    source: "rerank" (chosen by the model among the candidates),
      "generate" (spelled by beam search), "retriever" (the retriever's
      order: past the candidates, or topping up a short generation) or
      "popularity" (no items to retrieve from).
    score: the model's score where it gave one (candidate log-likelihood,
      or beam rank as a negative number), else the retriever's.
  """

  item: int
  item_id: str
  title: str
  source: str
  score: float


@dataclasses.dataclass(frozen=True)
class _Person:
  """Who a request is about: their user row, history and exclusions."""

  row: int  # user row of the serving CF table
  vector: np.ndarray  # float32[d] CF vector
  history: np.ndarray  # int32[n] items, oldest first
  exclude: np.ndarray  # int32[m] items never to recommend


class Recommender:
  """Recommendations, descriptions and profiles from a trained ILM.

  Args:
    restored: what ``restore.restore`` returned.
    retriever: "als" or "sasrec" (``RETRIEVERS``).
    sasrec: for "sasrec", the trained (module, params)
      (``restore.restore_sasrec``).
  """

  def __init__(
    self,
    restored: restore_lib.Restored,
    retriever: str = "als",
    sasrec: tuple | None = None,
  ):
    _check_retriever(retriever)
    if (retriever == "sasrec") != (sasrec is not None):
      raise ValueError("a trained SASRec is given with retriever='sasrec' only")
    self.retriever = retriever
    self.sasrec = sasrec  # (module, params) or None
    self.config = restored.config
    self.split = restored.split
    self.table = restored.table
    self.catalog = restored.split.catalog
    self.step = restored.step
    c = self.config.stage2
    self._c = c
    u, d = self.table.num_users, self.table.dim
    # Serving table: the trained users, one row for a new user, the items.
    self._cf = np.concatenate(
      [self.table.users, np.zeros((1, d), np.float32), self.table.items]
    ).astype(np.float32)
    self.new_user_row = u
    ilm = restored.ilm
    encoder = ilm.prompt_encoder
    self._ilm = TrainedIlm(
      dataclasses.replace(ilm.model, num_users=u + 1),
      ilm.encoder_params,
      ilm.llm_params,
      self._cf,
      PromptEncoder(
        encoder.tokenizer,
        encoder.item_index,
        u + 1,
        encoder.coding,
        encoder.max_answer_tokens,
      ),
      ilm.trie,
    )
    _, train_items = self.split.train_interactions()
    self.popularity = np.bincount(train_items, minlength=self.split.num_items)
    titles = self.catalog.item_fields.get("title")
    if titles is None:
      titles = [P.item_title(self.catalog, i) for i in range(self.num_items)]
    self.titles = TitleIndex(titles, self.popularity)
    self._user_of_id = {str(x): n for n, x in enumerate(self.catalog.user_ids)}
    self._descriptions: dict[int, str] = {}

  @classmethod
  def from_workdir(
    cls,
    workdir: str | pathlib.Path,
    stage_dir: str = "stage2",
    retriever: str = "als",
  ) -> Recommender:
    """Restores a workdir written by ``launch/train.py`` (``restore``);
    ``retriever="sasrec"`` also restores its trained SASRec."""
    _check_retriever(retriever)  # before minutes of restoring
    restored = restore_lib.restore(workdir, stage_dir)
    sasrec = None
    if retriever == "sasrec":
      sasrec = restore_lib.restore_sasrec(workdir, restored)
    return cls(restored, retriever, sasrec)

  @property
  def num_items(self) -> int:
    return self.split.num_items

  # Items and users by name.

  def find(self, title: str) -> Match:
    """The catalogue item a (possibly misspelt, year-less) title names.

    Raises:
      titles.TitleNotFoundError: nothing close; the message lists the nearest.
    """
    return self.titles.lookup(title)

  def item_index(self, item: int | str) -> int:
    """An item index from an index (int) or a title (str, fuzzy)."""
    if isinstance(item, str):
      return self.find(item).item
    item = int(item)
    if not 0 <= item < self.num_items:
      raise ValueError(
        f"item index {item} outside the catalogue [0, {self.num_items})"
      )
    return item

  def user_index(self, user: int | str) -> int:
    """A user index from an index (int) or the dataset's user id (str)."""
    if isinstance(user, str):
      if user not in self._user_of_id:
        raise KeyError(f"no user with the dataset's id {user!r}")
      return self._user_of_id[user]
    user = int(user)
    if not 0 <= user < self.split.num_users:
      raise ValueError(f"user index {user} outside [0, {self.split.num_users})")
    return user

  def title(self, item: int) -> str:
    return self.titles.titles[int(item)]

  def item_id(self, item: int) -> str:
    return str(self.catalog.item_ids[int(item)])

  def seen(self, user: int | str) -> np.ndarray:
    """int32[n] every item a known user has (training, valid and test)."""
    u = self.user_index(user)
    s = self.split
    return np.concatenate(
      [s.train_sequences[u], [s.valid_items[u], s.test_items[u]]]
    ).astype(np.int32)

  # Requests.

  def _person(self, user, history, disliked) -> _Person:
    history = [self.item_index(i) for i in history]
    disliked = [self.item_index(i) for i in disliked]
    c = self.config.cf
    if user is None:
      row = self.new_user_row
      vector = fold_in(self.table.items, history, c.reg, c.alpha)
      items = history
    else:
      row = self.user_index(user)
      items = [*self.seen(row).tolist(), *history]
      vector = self.table.users[row]
      if history:  # more evidence than the table knows: fold it in too
        vector = fold_in(self.table.items, items, c.reg, c.alpha)
    return _Person(
      row=row,
      vector=np.asarray(vector, np.float32),
      history=np.asarray(items, np.int32),
      exclude=np.unique(np.asarray(items + disliked, np.int32)),
    )

  def _serving(self, person: _Person) -> TrainedIlm:
    """The ILM over a table whose new-user row holds ``person``'s vector."""
    if person.row != self.new_user_row:
      return self._ilm
    cf = self._cf.copy()
    cf[self.new_user_row] = person.vector
    return dataclasses.replace(self._ilm, cf=cf)

  def _retrieve(self, person: _Person, length: int) -> tuple[list, str]:
    """(the ``length`` best unexcluded items, best first; the source)."""
    if self.sasrec is not None and len(person.history):
      model, params = self.sasrec
      scores, source = (
        sasrec_pipeline.history_scores(model, params, person.history),
        "retriever",
      )
    elif np.any(person.vector):
      scores, source = self.table.items @ person.vector, "retriever"
    else:
      scores, source = self.popularity.astype(np.float32), "popularity"
    scores = np.asarray(scores, np.float64).copy()
    scores[person.exclude] = -np.inf
    order = np.argsort(-scores, kind="stable")  # ties: lower index first
    order = order[np.isfinite(scores[order])][:length]
    return [(int(i), float(scores[i])) for i in order], source

  def _history_for_prompt(self, person: _Person) -> np.ndarray:
    return person.history[-int(self._c.max_history) :]

  def recommend(
    self,
    user: int | str | None = None,
    history: Sequence[int | str] = (),
    wish: str = "",
    k: int = 10,
    mode: str = "rerank",
    disliked: Sequence[int | str] = (),
  ) -> list[Recommendation]:
    """The k best items for a user, none they have seen or disliked.

    Args:
      user: a known user (index, or the dataset's id as a str), or None
        for a new user described by ``history`` alone.
      history: items the user liked, oldest first (indices, or titles
        looked up fuzzily); for a known user, added to what they had.
      wish: what they ask for in words ("" = no wish).
      k: how many items.
      mode: "rerank" (the model reorders the retriever's top N) or
        "generate" (beam search over the whole catalogue).
      disliked: items never to recommend (indices or titles).

    Returns:
      k Recommendations, best first, distinct (fewer only when the
      catalogue runs out).
    """
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    person = self._person(user, history, disliked)
    n = int(self._c.rerank.num_candidates)
    retrieved, source = self._retrieve(person, max(n, k))
    if not len(person.history):
      # No history to write into a prompt: the retriever's order stands.
      return [self._rec(i, source, s) for i, s in retrieved[:k]]
    if mode == "rerank":
      return self._rerank(person, wish, retrieved, source, k)
    return self._generate(person, wish, retrieved, source, k)

  def _rec(self, item: int, source: str, score: float) -> Recommendation:
    return Recommendation(
      item, self.item_id(item), self.title(item), source, float(score)
    )

  def _rerank(self, person, wish, retrieved, source, k):
    n = min(int(self._c.rerank.num_candidates), len(retrieved))
    if n < 2:
      return [self._rec(i, source, s) for i, s in retrieved[:k]]
    candidates = np.asarray([i for i, _ in retrieved[:n]], np.int32)
    task = P.RERANK_CONVERSATIONAL if wish else P.RERANK
    prompt = P.render(
      P.templates(task, True)[0],
      user=person.row,
      history=self._history_for_prompt(person),
      wish=wish,
      candidates=candidates,
    )
    scores = rerank_eval.score_prompts(
      *self._serving(person).inputs,
      [prompt],
      batch_size=1,
      buckets=tuple(self._c.length_buckets),
    )[0]
    # Highest log-likelihood first; ties keep the retriever's order.
    order = sorted(range(n), key=lambda j: (-scores[j], j))
    out = [self._rec(int(candidates[j]), "rerank", scores[j]) for j in order]
    out += [self._rec(i, source, s) for i, s in retrieved[n:]]
    return out[:k]

  def _generate(self, person, wish, retrieved, source, k):
    task = P.CONVERSATIONAL if wish else P.SEQUENTIAL
    prompt = P.render(
      P.templates(task, True)[0],
      user=person.row,
      history=self._history_for_prompt(person),
      wish=wish,
    )
    ilm = self._serving(person)
    trie = without_items(ilm.trie, person.exclude)
    ranked = generative.rank_items(
      *ilm.inputs,
      [prompt],
      trie,
      batch_size=1,
      buckets=tuple(self._c.length_buckets),
      num_beams=max(k, int(self._c.eval.num_beams)),
      # The search the workdir was evaluated with (``eval.trie_softmax``).
      renormalize=bool(self._c.eval.get("trie_softmax", False)),
    )[0]
    out, taken = [], set(person.exclude.tolist())
    for rank, item in enumerate(ranked):
      if item >= 0 and int(item) not in taken:
        out.append(self._rec(int(item), "generate", -float(rank)))
        taken.add(int(item))
    for item, score in retrieved:
      if len(out) >= k:
        break
      if item not in taken:
        out.append(self._rec(item, source, score))
        taken.add(item)
    return out[:k]

  def describe(self, item: int | str) -> str:
    """The model's description of an item (greedy, cached)."""
    return self.describe_many([self.item_index(item)])[0]

  def describe_many(self, items: Iterable[int | str]) -> list[str]:
    """Descriptions of several items, decoded in batches (cached)."""
    items = [self.item_index(i) for i in items]
    todo = sorted({i for i in items if i not in self._descriptions})
    if todo:
      template = P.templates(P.DESCRIPTION, True)[0]
      prompts = [P.render(template, item=i) for i in todo]
      texts = self._texts(self._ilm, prompts)
      self._descriptions.update(zip(todo, texts))
    return [self._descriptions[i] for i in items]

  def profile(
    self,
    user: int | str | None = None,
    history: Sequence[int | str] = (),
  ) -> str:
    """The model's description of a user's tastes (greedy).

    Args:
      user: a known user (index or dataset id), or None for a new user
        given by ``history`` (their folded-in CF vector).
      history: a new user's liked items (indices or titles).
    """
    person = self._person(user, history, ())
    prompt = P.render(P.templates(P.PROFILE, True)[0], user=person.row)
    return self._texts(self._serving(person), [prompt])[0]

  def _texts(self, ilm: TrainedIlm, prompts) -> list[str]:
    return generative.generate_texts(
      *ilm.inputs,
      prompts,
      batch_size=int(self._c.eval.batch_size),
      buckets=tuple(self._c.length_buckets),
      max_new_tokens=int(self._c.max_answer_tokens),
    )
