r"""Writes a dataset's leave-one-out splits as TFDS array_record files.

Parses the raw files, k-core filters, splits as OpenP5 does and writes the
train / valid / test next-item examples plus the catalog (item ids and text)
with the ``ilm_sequences`` TFDS builder. TensorFlow is not needed. The
result is an export (readable with ``builder.as_data_source(split)``, e.g. by
grain): the training stages do not read it, they write their own examples as
array_record files in their workdir (``ilm_jax.data.records``).

  python launch/prepare_data.py --dataset=ml-latest-small \
      --data_dir=workdir/tfds
  python launch/prepare_data.py --dataset=openp5-beauty \
      --raw_path=../shared/data --data_dir=workdir/tfds

A dataset already prepared in ``--data_dir`` is not rewritten; the command
then just prints its counts.
"""

from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app, flags

from ilm_jax import console
from ilm_jax.data import registry, split, tfds_builder

_DATASET = flags.DEFINE_enum(
  "dataset",
  "ml-latest-small",
  sorted(registry.DATASETS),
  "Dataset to prepare (ml-latest-small is embedded in the package).",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", "workdir/tfds", "Root directory of the prepared TFDS datasets."
)
_RAW_PATH = flags.DEFINE_string(
  "raw_path",
  "",
  "Raw files (file or directory) as load_dataset's config.path; empty = "
  "the dataset's default location (embedded zip, or ../shared/data).",
)
_KCORE = flags.DEFINE_integer(
  "kcore", -1, "k-core threshold; -1 = the dataset's default."
)
_MIN_RATING = flags.DEFINE_float(
  "min_rating", 0.0, "Drop MovieLens ratings below this (0 = keep all)."
)
_MAX_HISTORY = flags.DEFINE_integer(
  "max_history", split.MAX_HISTORY, "History length of every example."
)


def main(argv: Sequence[str]) -> None:
  console.start(argv)
  tfds.disable_progress_bar()  # progress bars garble non-interactive logs
  builder = tfds_builder.make_builder(
    _DATASET.value,
    _DATA_DIR.value,
    raw_path=_RAW_PATH.value or None,
    kcore=_KCORE.value,
    min_rating=_MIN_RATING.value,
    max_history=_MAX_HISTORY.value,
  )
  counts = tfds_builder.prepare(builder)
  print(f"{builder.builder_config.name} -> {builder.data_dir}")
  for name, count in counts.items():
    print(f"  {name:>6}: {count:,}")


if __name__ == "__main__":
  app.run(main)
