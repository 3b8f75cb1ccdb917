"""Endless, resumable streams of global batches, each host reading its rows.

A stage describes its data order as ``plan(step)``: the record positions of
global batch ``step`` (a pure function of the seed and the step), and how to
turn this host's rows of it into arrays (``read``). ``GlobalBatches`` runs
that as a grain ``MapDataset`` over steps: the iterator's state is grain's
own small dict (the next step), which the training loop saves in its
checkpoint, so a resumed run continues at exactly the next global batch.

Every host computes the same plan and reads only its contiguous share of
each global batch's rows (``HostShard``); ``Trainer.place_batch`` joins the
shares into one global array (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

# Steps a stream can run: effectively endless (grain needs a length).
MAX_STEPS = 2**62


@dataclasses.dataclass(frozen=True)
class HostShard:
  """Which share of every global batch this process reads.

  Attributes:
    index: this process (``jax.process_index()``).
    count: processes (``jax.process_count()``).
  """

  index: int = 0
  count: int = 1

  def __post_init__(self):
    if not 0 <= self.index < self.count:
      raise ValueError(f"host {self.index} is not one of {self.count}")

  @classmethod
  def of_this_process(cls) -> HostShard:
    return cls(jax.process_index(), jax.process_count())

  def rows(self, global_rows: int) -> slice:
    """This host's rows of a leading axis of ``global_rows``."""
    if global_rows % self.count:
      raise ValueError(
        f"{global_rows} rows do not split over {self.count} hosts"
      )
    per_host = global_rows // self.count
    return slice(self.index * per_host, (self.index + 1) * per_host)

  def take(self, rows: np.ndarray) -> np.ndarray:
    """This host's share of ``rows`` (leading axis)."""
    return rows[self.rows(len(rows))]


class GlobalBatches:
  """Checkpointable iterator of this host's share of each global batch.

  Args:
    make_batch: ``make_batch(step) -> dict[str, np.ndarray]``, this host's
      rows of global batch ``step``; a pure function of the step.
  """

  def __init__(self, make_batch: Callable[[int], dict[str, np.ndarray]]):
    steps = grain.MapDataset.range(0, MAX_STEPS).map(make_batch)
    # Batches are made in this thread: reader threads only add polling on
    # few cores, and a batch is cheap next to a training step.
    self._dataset = steps.to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  @property
  def step(self) -> int:
    """Global batches yielded so far (the next one's step)."""
    return int(self._iterator.get_state()["next_index"])

  def get_state(self) -> dict:
    """The position: grain's iterator state (JSON-able)."""
    return dict(self._iterator.get_state())

  def set_state(self, state: dict) -> None:
    self._iterator.set_state(dict(state))


def on_first_host(write: Callable[[], object]) -> None:
  """Runs ``write`` (e.g. writing record files) on process 0 only.

  The workdir is shared by the hosts; the others wait until the files are
  there before reading them.
  """
  if jax.process_index() == 0:
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("record files written")
