"""Deterministic, checkpointable, per-host grain loaders of next-item examples.

The same loader runs over either source of examples:

  - the array_record splits written by ``tfds_builder.IlmSequences``
    (``builder.as_data_source(split)``), or
  - a ``LeaveOneOutSplit`` held in memory (``ExampleArrays.from_split``).

Both yield ``{"user": int32, "history": int32[H], "target": int32}`` records
in the same order, so the loader's batches are identical whichever is used.

Order is a pure function of (seed, epoch, shard): grain's ``IndexSampler``
shuffles each epoch with a seeded permutation, and the iterator's position is
a small JSON blob (``iterator.get_state()`` -> bytes) that goes into an orbax
checkpoint beside the model (``grain.checkpoint.CheckpointSave``), so a
restarted run continues at the very next example.

Multi-host: each JAX process reads its own contiguous shard of the records
(``grain.sharding.ShardByJaxProcess``) and ``batch_size`` is the per-host
batch; the global batch is ``batch_size * jax.process_count()``. Shards are
cut to equal length so every host runs the same number of steps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.tfds_builder import split_examples

Record = dict[str, Any]


class ExampleArrays:
  """A random-access grain source over in-memory example arrays.

  Records are ``{"user": int32, "history": int32[H], "target": int32}``,
  the same as the TFDS builder writes.
  """

  def __init__(
    self, users: np.ndarray, histories: np.ndarray, targets: np.ndarray
  ):
    """Wraps example arrays.

    Args:
      users: int32[N] user indices.
      histories: int32[N, H] right-aligned histories padded with -1.
      targets: int32[N] target item indices.
    """
    n = len(users)
    if histories.ndim != 2 or len(histories) != n or len(targets) != n:
      raise ValueError(
        "examples need users[N], histories[N, H], targets[N]; got "
        f"{users.shape}, {histories.shape}, {targets.shape}"
      )
    self._users = np.asarray(users, dtype=np.int32)
    self._histories = np.asarray(histories, dtype=np.int32)
    self._targets = np.asarray(targets, dtype=np.int32)

  @classmethod
  def from_split(cls, loo: LeaveOneOutSplit, split_name: str) -> ExampleArrays:
    """The "train", "valid" or "test" examples of a leave-one-out split."""
    return cls(*split_examples(loo, split_name))

  def __len__(self) -> int:
    return len(self._users)

  def __getitem__(self, index: int) -> Record:
    return {
      "user": self._users[index],
      "history": self._histories[index],
      "target": self._targets[index],
    }

  def __repr__(self) -> str:
    return f"ExampleArrays(n={len(self)}, history={self._histories.shape[1]})"


class _PaddedSource:
  """A source padded to a length multiple; padding records are masked.

  Evaluation must see every user exactly once at fixed batch shapes: the
  padding fills the last batch of every shard and carries ``mask=False``.
  """

  def __init__(self, source: Sequence[Record], multiple: int):
    self._source = source
    self._length = -(-len(source) // multiple) * multiple

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Record:
    if index < len(self._source):
      return dict(self._source[index])
    # Any real record gives the right shapes; the mask removes it again.
    return {**self._source[0], "mask": False}

  def __repr__(self) -> str:
    return f"_PaddedSource({self._source!r}, length={self._length})"


class _ToFixedDtypes(grain.transforms.Map):
  """Casts a record to numpy int32 fields and adds ``mask``.

  array_record sources return Python ints for scalars; without the cast a
  batch of them would be int64 and differ from the in-memory source's.
  """

  def map(self, element: Record) -> Record:
    return {
      "user": np.int32(element["user"]),
      "history": np.asarray(element["history"], dtype=np.int32),
      "target": np.int32(element["target"]),
      "mask": np.bool_(element.get("mask", True)),
    }


def host_shard_options(
  drop_remainder: bool = True,
) -> grain.sharding.ShardOptions:
  """This JAX process's shard: index ``jax.process_index()`` of ``count``."""
  return grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)


def make_loader(
  source: Sequence[Record],
  *,
  batch_size: int,
  seed: int = 0,
  shuffle: bool = True,
  num_epochs: int | None = 1,
  shard_options: grain.sharding.ShardOptions | None = None,
  pad_final_batch: bool = False,
  worker_count: int = 0,
  read_threads: int | None = None,
) -> grain.DataLoader:
  """A grain DataLoader yielding fixed-shape batches of examples.

  Args:
    source: a random-access source of example records (an array_record
      data source from the TFDS builder, or ``ExampleArrays``).
    batch_size: examples per batch on this host.
    seed: shuffle seed (non-negative, 32 bits); the order is a function of
      seed, epoch and shard only.
    shuffle: shuffle within this host's shard, freshly each epoch.
    num_epochs: passes over the data; None = repeat forever (training loops
      that count steps).
    shard_options: which part of the records this host reads; None = the
      shard of this JAX process (``jax.process_index()`` of
      ``jax.process_count()``, equal shard lengths).
    pad_final_batch: pad with masked copies so no example is dropped (for
      evaluation); otherwise the remainder that does not fill a batch is
      dropped and every batch has ``mask`` all True.
    worker_count: grain worker processes (0 = read in this process).
    read_threads: threads prefetching records; None = 0 for ``ExampleArrays``
      (already in memory: grain's reader threads only add polling, measured
      10x slower on 2 cores) and grain's default for file-backed sources,
      whose reads overlap I/O.

  Returns:
    A ``grain.DataLoader``; ``iter(loader)`` yields dicts of
    ``user int32[B]``, ``history int32[B, H]``, ``target int32[B]``,
    ``mask bool[B]`` with ``B = batch_size``. Its iterators have
    ``get_state() -> bytes`` and ``set_state(bytes)``.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if len(source) == 0:
    raise ValueError(f"source {source!r} has no records")
  if shard_options is None:
    shard_options = host_shard_options()
  default_read = grain.ReadOptions()
  if read_threads is None:
    in_memory = isinstance(source, ExampleArrays)
    read_threads = 0 if in_memory else default_read.num_threads
  read_options = grain.ReadOptions(
    num_threads=read_threads,
    prefetch_buffer_size=default_read.prefetch_buffer_size
    if read_threads
    else 0,
  )
  if pad_final_batch:
    source = _PaddedSource(source, batch_size * shard_options.shard_count)
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shard_options=shard_options,
    shuffle=shuffle,
    num_epochs=num_epochs,
    seed=seed,
  )
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[
      _ToFixedDtypes(),
      grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
    ],
    shard_options=shard_options,
    worker_count=worker_count,
    read_options=read_options,
  )


def restore_state(iterator: grain.DataLoaderIterator, state: bytes) -> None:
  """Moves a fresh iterator to a saved position, refusing a different order.

  grain's ``set_state`` trusts the caller; a state saved under another seed,
  shard, epoch count or record count would silently resume somewhere else.
  The data source itself is not compared: the array_record and in-memory
  sources of one split hold the same records in the same order, so a run may
  switch between them.

  Args:
    iterator: ``iter(loader)`` of a loader built as the saved one was.
    state: bytes from ``iterator.get_state()`` of the saved run.

  Raises:
    ValueError: when the saved sampler (records, shard, shuffle, epochs,
      seed) differs from this loader's.
  """
  saved = json.loads(state).get("sampler")
  current = json.loads(iterator.get_state()).get("sampler")
  if saved != current:
    raise ValueError(
      f"iterator state was saved with sampler {saved!r}, but this loader "
      f"has {current!r}"
    )
  iterator.set_state(state)


def loader_from_split(
  loo: LeaveOneOutSplit, split_name: str, **loader_kwargs
) -> grain.DataLoader:
  """``make_loader`` over a leave-one-out split held in memory.

  Args:
    loo: the split.
    split_name: "train", "valid" or "test".
    **loader_kwargs: ``make_loader``'s keyword arguments.
  """
  return make_loader(ExampleArrays.from_split(loo, split_name), **loader_kwargs)


def batches_per_epoch(
  num_records: int,
  batch_size: int,
  shard_count: int,
  pad_final_batch: bool = False,
) -> int:
  """Batches each host yields per epoch (the same on every host).

  Args:
    num_records: examples in the source.
    batch_size: per-host batch size.
    shard_count: number of hosts (``jax.process_count()``).
    pad_final_batch: as in ``make_loader``.
  """
  if pad_final_batch:
    return -(-num_records // (batch_size * shard_count))
  return (num_records // shard_count) // batch_size
