"""Stage-2 training batches: an endless, resumable epoch plan over buckets."""

from __future__ import annotations

import numpy as np

from ilm_jax.data.stage2.collate import bucket_of, collate


class BucketBatches:
  """Endless, deterministic, resumable training batches from length buckets.

  Each epoch shuffles every bucket, cuts it into batches (the last one of a
  bucket topped up with random members of that bucket) and shuffles the
  batch order; the state is (epoch, batch within epoch). Re-ranking
  examples and the other tasks' examples fill separate batches, so each
  kind keeps its own fixed shapes (one compile per bucket and kind).

  Args:
    examples: encoded training examples (with answers).
    batch_size: B.
    buckets: ascending bucket lengths.
    num_targets: P answer positions per row.
    pad_id: padding token id.
    seed: shuffling seed.
    num_users: U; when given, batches carry the retrieval head's targets
      (``collate(..., retrieval_targets=True)``).
  """

  def __init__(
    self,
    examples,
    batch_size,
    buckets,
    num_targets,
    pad_id,
    seed=0,
    num_users: int | None = None,
  ):
    if not examples:
      raise ValueError("no stage-2 training examples")
    self.examples = examples
    self.batch_size = int(batch_size)
    self.buckets = tuple(int(b) for b in buckets)
    self.num_targets = int(num_targets)
    self.pad_id = int(pad_id)
    self.seed = int(seed)
    self.num_users = num_users
    # The target item may be one more distinct entity per example.
    self.num_entities = self.batch_size * (
      max(1, max(e.num_entities for e in examples)) + (num_users is not None)
    )
    rerank = [e for e in examples if e.is_rerank]
    self.num_candidates = max([1] + [len(e.cand_tokens) for e in rerank])
    self.answer_length = max([1] + [e.answer_length for e in rerank])
    # Group key: (bucket index, is re-ranking).
    self.groups = sorted(
      {(bucket_of(len(e.tokens), self.buckets), e.is_rerank) for e in examples}
    )
    self.members: list[list[int]] = [[] for _ in self.groups]
    for n, e in enumerate(examples):
      key = (bucket_of(len(e.tokens), self.buckets), e.is_rerank)
      self.members[self.groups.index(key)].append(n)
    self.epoch, self.position = 0, 0
    self._plan = self._epoch_plan(0)

  def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng([self.seed, epoch])
    plan = []
    for g, members in enumerate(self.members):
      order = rng.permutation(np.asarray(members))
      extra = -len(order) % self.batch_size
      order = np.concatenate([order, rng.choice(order, extra)])
      plan += [(g, chunk) for chunk in order.reshape(-1, self.batch_size)]
    return [plan[i] for i in rng.permutation(len(plan))]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position >= len(self._plan):
      self.epoch, self.position = self.epoch + 1, 0
      self._plan = self._epoch_plan(self.epoch)
    group, rows = self._plan[self.position]
    self.position += 1
    bucket, rerank = self.groups[group]
    return collate(
      [self.examples[i] for i in rows],
      self.buckets[bucket],
      1 if rerank else self.num_targets,
      self.num_entities,
      self.pad_id,
      retrieval_targets=self.num_users is not None,
      num_users=self.num_users,
      num_candidates=self.num_candidates if rerank else 1,
      answer_length=self.answer_length if rerank else 1,
    )

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "position": self.position}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
    self._plan = self._epoch_plan(self.epoch)
