"""Stage-2 training batches: a resumable epoch plan over length buckets."""

from __future__ import annotations

import numpy as np

from ilm_jax.data.global_batches import GlobalBatches, HostShard
from ilm_jax.data.records import RecordSource
from ilm_jax.data.stage2.collate import bucket_of, collate
from ilm_jax.data.stage2.records import from_record

# Epoch plans kept: the current one and the one before (few, they are big).
_PLANS_KEPT = 2


class BucketBatches(GlobalBatches):
  """Endless, deterministic, resumable global batches from length buckets.

  Each epoch shuffles every bucket, cuts it into batches (the last one of a
  bucket topped up with random members of that bucket) and shuffles the
  batch order; global batch ``step`` is a pure function of (seed, step).
  Re-ranking examples and the other tasks' examples fill separate batches,
  so each kind keeps its own fixed shapes (one compile per bucket and kind).
  The plan comes from the record index alone; each host reads only its
  share of a batch's examples, and lists the whole batch's distinct
  entities, so the hosts' shares join into the single-host batch.

  Args:
    path: record file stem (``records.write_stage2_records``).
    batch_size: B, the global batch.
    buckets: ascending bucket lengths.
    num_targets: P answer positions per row.
    pad_id: padding token id.
    seed: shuffling seed.
    num_users: U; when given, batches carry the retrieval head's targets
      (``collate(..., retrieval_targets=True)``).
    shard: this host's share; default: this JAX process's.

  Yields:
    This host's share of ``collate``'s batch: its B / hosts rows and its
    E / hosts of the ``entities`` and ``entity_is_candidate`` slots.
  """

  def __init__(
    self,
    path,
    batch_size,
    buckets,
    num_targets,
    pad_id,
    seed=0,
    num_users: int | None = None,
    shard: HostShard | None = None,
  ):
    self.source = RecordSource(path)
    if not len(self.source):
      raise ValueError("no stage-2 training examples")
    index = self.source.index
    self.batch_size = int(batch_size)
    self.buckets = tuple(int(b) for b in buckets)
    self.num_targets = int(num_targets)
    self.pad_id = int(pad_id)
    self.seed = int(seed)
    self.num_users = num_users
    self.shard = shard or HostShard.of_this_process()
    self._offsets = index["entity_offsets"]
    self._entity_rows = index["entity_rows"]
    self._target_row = index["target_row"]
    # The target item may be one more distinct entity per example.
    most = int(np.diff(self._offsets).max())
    self.num_entities = self.batch_size * (
      max(1, most) + (num_users is not None)
    )
    rerank = index["rerank"]
    self.num_candidates = int(max(1, *index["num_candidates"][rerank], 1))
    self.answer_length = int(max(1, *index["answer_length"][rerank], 1))
    # Group key: (bucket index, is re-ranking).
    keys = [
      (bucket_of(int(n), self.buckets), bool(r))
      for n, r in zip(index["length"], rerank)
    ]
    self.groups = sorted(set(keys))
    self.members: list[list[int]] = [[] for _ in self.groups]
    for n, key in enumerate(keys):
      self.members[self.groups.index(key)].append(n)
    self.steps_per_epoch = sum(
      -(-len(m) // self.batch_size) for m in self.members
    )
    self._plans: dict[int, list[tuple[int, np.ndarray]]] = {}
    super().__init__(self._batch)

  def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """(group, int[B] example positions) of each batch of ``epoch``."""
    if epoch in self._plans:
      return self._plans[epoch]
    rng = np.random.default_rng([self.seed, epoch])
    plan = []
    for g, members in enumerate(self.members):
      order = rng.permutation(np.asarray(members))
      extra = -len(order) % self.batch_size
      order = np.concatenate([order, rng.choice(order, extra)])
      plan += [(g, chunk) for chunk in order.reshape(-1, self.batch_size)]
    plan = [plan[i] for i in rng.permutation(len(plan))]
    while len(self._plans) >= _PLANS_KEPT:
      self._plans.pop(min(self._plans))
    self._plans[epoch] = plan
    return plan

  def _batch_entities(self, positions: np.ndarray) -> np.ndarray:
    """int32[R] sorted distinct CF rows of the examples at ``positions``."""
    parts = [
      self._entity_rows[self._offsets[n] : self._offsets[n + 1]]
      for n in positions
    ]
    if self.num_users is not None:
      targets = self._target_row[positions]
      parts.append(targets[targets >= 0])
    return np.unique(np.concatenate(parts)).astype(np.int32)

  def _batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, position = divmod(step, self.steps_per_epoch)
    group, positions = self._epoch_plan(epoch)[position]
    bucket, rerank = self.groups[group]
    examples = [
      from_record(r) for r in self.source.read(self.shard.take(positions))
    ]
    batch = collate(
      examples,
      self.buckets[bucket],
      1 if rerank else self.num_targets,
      self.num_entities,
      self.pad_id,
      retrieval_targets=self.num_users is not None,
      num_users=self.num_users,
      num_candidates=self.num_candidates if rerank else 1,
      answer_length=self.answer_length if rerank else 1,
      entity_rows=self._batch_entities(positions),
    )
    # The entity table is the global batch's; this host holds its slice.
    for name in ("entities", "entity_is_candidate"):
      if name in batch:
        batch[name] = self.shard.take(batch[name])
    return batch
