"""Leave-one-out splits as a tensorflow-datasets builder writing array_record.

One builder, ``IlmSequences``, with one BuilderConfig per dataset name in
``DATASETS``. Preparing it parses the raw files, k-core filters, applies the
OpenP5 leave-one-out split and writes three splits of identical features:

  train: one example per next-item prediction over the training prefixes
    (``LeaveOneOutSplit.sequential_examples`` order);
  valid: one example per user, history = training items, target = items[-2];
  test:  one example per user, history = training items + the validation
    item, target = items[-1].

Every example is ``{"user": int32, "history": int32[max_history] (right
aligned, padded with -1), "target": int32}``. Records keep generation order
(readers shuffle), so record ``i`` of a split equals example
``i`` of the in-memory split. The catalog (item and user ids, item text built
from training data only) goes to the dataset's metadata, since the splits
share one feature spec and item text has a different shape from examples.

Writing and reading use array_record: neither needs TensorFlow. Read back with
``builder.as_data_source(split)``, a random-access source grain can sample.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from ilm_jax.data import registry, split
from ilm_jax.data.split import LeaveOneOutSplit

SPLITS = ("train", "valid", "test")
_DESCRIPTION = (
  "Next-item examples (user, history, target) of an OpenP5 leave-one-out "
  "split; the catalog with item text is in the metadata."
)


@dataclasses.dataclass(eq=False)
class SequenceSplitConfig(tfds.core.BuilderConfig):
  """Which dataset to split and how.

  Attributes:
    dataset: key of ``DATASETS``; empty = the config's name. Lets a config
      such as ``ml-100k-k10`` prepare ``ml-100k`` with other options without
      overwriting the default one on disk.
    kcore: k-core threshold; -1 = the dataset's default.
    min_rating: interactions rated below this are dropped (MovieLens only).
    max_history: history length of every example.
  """

  dataset: str = ""
  kcore: int = -1
  min_rating: float = 0.0
  max_history: int = split.MAX_HISTORY

  @property
  def dataset_name(self) -> str:
    return self.dataset or self.name


def _default_configs() -> list[SequenceSplitConfig]:
  return [
    SequenceSplitConfig(
      name=name,
      description=f"{name}: OpenP5 leave-one-out, history capped at "
      f"{split.MAX_HISTORY}, default k-core.",
    )
    for name in registry.DATASETS
  ]


class IlmSequences(tfds.core.GeneratorBasedBuilder):
  """Next-item examples of a leave-one-out split (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train/valid/test next-item examples + catalog."}
  BUILDER_CONFIGS = _default_configs()

  def __init__(
    self,
    *,
    raw_path: str | pathlib.Path | None = None,
    file_format: str = "array_record",
    **kwargs,
  ):
    """Creates the builder.

    Args:
      raw_path: where the raw files are (a file or directory, as the
        ``path`` field of ``load_dataset``'s config); None = the dataset's
        default location. Only used when preparing.
      file_format: record format written; array_record is the one grain and
        ``as_data_source`` read without TensorFlow.
      **kwargs: passed to ``tfds.core.DatasetBuilder`` (``config``,
        ``data_dir``, ...).
    """
    self._raw_path = raw_path
    self._split_cache: LeaveOneOutSplit | None = None
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if config.dataset_name not in registry.DATASETS:
      raise ValueError(
        f"builder config {config.name!r}: dataset "
        f"{config.dataset_name!r} is not one of {sorted(registry.DATASETS)}"
      )
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "user": np.int32,
          "history": tfds.features.Tensor(
            shape=(config.max_history,), dtype=np.int32
          ),
          "target": np.int32,
        }
      ),
      supervised_keys=None,
      # Generation order is the in-memory order; readers shuffle.
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def load_split(self) -> LeaveOneOutSplit:
    """Parses the raw files and splits them as the config asks (cached)."""
    if self._split_cache is None:
      config = self.builder_config
      source = _LoadConfig(
        name=config.dataset_name,
        path=str(self._raw_path) if self._raw_path else "",
        kcore=config.kcore,
        min_rating=config.min_rating,
      )
      data = registry.load_dataset(source)
      self._split_cache = split.leave_one_out(data, config.max_history)
    return self._split_cache

  def _split_generators(self, dl_manager):
    del dl_manager  # raw files are local (embedded or given by path)
    loo = self.load_split()
    catalog = loo.catalog
    self.info.metadata.update(
      {
        "dataset": loo.name,
        "num_users": loo.num_users,
        "num_items": loo.num_items,
        "max_history": loo.max_history,
        "user_ids": [str(u) for u in catalog.user_ids],
        "item_ids": [str(i) for i in catalog.item_ids],
        # Tag text was rebuilt from training pairs only by leave_one_out.
        "item_text": [catalog.item_text(i) for i in range(loo.num_items)],
      }
    )
    return {name: self._generate_examples(name) for name in SPLITS}

  def _generate_examples(self, split_name: str):
    users, histories, targets = split_examples(self.load_split(), split_name)
    for i in range(len(users)):
      yield (
        i,
        {"user": users[i], "history": histories[i], "target": targets[i]},
      )


@dataclasses.dataclass(frozen=True)
class _LoadConfig:
  """The fields ``registry.load_dataset`` reads."""

  name: str
  path: str
  kcore: int
  min_rating: float


def split_examples(
  loo: LeaveOneOutSplit, split_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The examples of one split as arrays, in record order.

  Args:
    loo: a leave-one-out split.
    split_name: "train", "valid" or "test".

  Returns:
    (int32[N] user, int32[N, max_history] history right-aligned and padded
    with -1, int32[N] target); N = number of training targets for "train",
    number of users otherwise.
  """
  if split_name == "train":
    return loo.sequential_examples()
  if split_name not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split_name!r}")
  histories = np.full((loo.num_users, loo.max_history), -1, dtype=np.int32)
  for u in range(loo.num_users):
    h = loo.history(u, split_name)
    if len(h):
      histories[u, loo.max_history - len(h) :] = h
  users = np.arange(loo.num_users, dtype=np.int32)
  return users, histories, loo.targets(split_name).astype(np.int32)


def make_builder(
  dataset: str,
  data_dir: str | pathlib.Path,
  *,
  raw_path: str | pathlib.Path | None = None,
  kcore: int = -1,
  min_rating: float = 0.0,
  max_history: int = split.MAX_HISTORY,
) -> IlmSequences:
  """A builder for ``dataset``; non-default options get their own config name.

  Args:
    dataset: key of ``DATASETS``.
    data_dir: root directory of prepared TFDS datasets.
    raw_path: raw files (None = the dataset's default location).
    kcore, min_rating, max_history: split options; when any differs from
      the default, the config is named e.g. ``ml-1m-k10-r4.0-h50`` so
      prepared data of different options never collide on disk.

  Returns:
    The builder (not yet prepared: call ``download_and_prepare()``).
  """
  if dataset not in registry.DATASETS:
    raise ValueError(
      f"unknown dataset {dataset!r}; known: {sorted(registry.DATASETS)}"
    )
  suffix = ""
  if kcore >= 0:
    suffix += f"-k{kcore}"
  if min_rating:
    suffix += f"-r{min_rating:g}"
  if max_history != split.MAX_HISTORY:
    suffix += f"-h{max_history}"
  config: str | SequenceSplitConfig = dataset
  if suffix:
    config = SequenceSplitConfig(
      name=dataset + suffix,
      dataset=dataset,
      kcore=kcore,
      min_rating=min_rating,
      max_history=max_history,
      description=f"{dataset} with non-default split options {suffix}",
    )
  return IlmSequences(config=config, data_dir=str(data_dir), raw_path=raw_path)


def prepare(builder: IlmSequences) -> dict[str, int]:
  """Writes the builder's splits (a no-op when already on disk).

  Returns:
    split name -> number of examples, plus ``users`` and ``items``.
  """
  builder.download_and_prepare()
  counts = {s: builder.info.splits[s].num_examples for s in SPLITS}
  counts["users"] = int(builder.info.metadata["num_users"])
  counts["items"] = int(builder.info.metadata["num_items"])
  return counts


def data_sources(builder: IlmSequences) -> dict[str, object]:
  """split name -> random-access array_record source of example dicts."""
  return {s: builder.as_data_source(split=s) for s in SPLITS}
