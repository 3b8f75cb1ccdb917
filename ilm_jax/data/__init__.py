"""Datasets: parsing, k-core filtering, leave-one-out splits, item indexing."""

from ilm_jax.data.dataset import Catalog, DataFormatError, Dataset
from ilm_jax.data.registry import DATASETS, load_dataset, load_split
from ilm_jax.data.split import LeaveOneOutSplit, leave_one_out

__all__ = [
  "DATASETS",
  "Catalog",
  "DataFormatError",
  "Dataset",
  "LeaveOneOutSplit",
  "leave_one_out",
  "load_dataset",
  "load_split",
]
