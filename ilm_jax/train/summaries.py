"""Where a run's numbers go: TensorBoard event files and a metrics JSON."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from tensorboardX import SummaryWriter

from ilm_jax import distributed, files

METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"


def _plain(value):
  value = float(np.asarray(value))
  return value if math.isfinite(value) else str(value)


class MetricsLog:
  """Scalar summaries for TensorBoard plus a JSON history in the workdir.

  The JSON file (``metrics.json``) holds ``{"train": [{"step": s, ...}],
  "eval": [...], "final": {...}}`` and is rewritten atomically, so a resumed
  run continues the history of the interrupted one. In a multi-host job
  every process keeps the history (they all read the same file on resume)
  but only process 0 writes it and the TensorBoard events.
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = files.path(workdir)
    self.path = self.workdir / METRICS_FILE
    if self.path.exists():
      # Training metrics live only here: a damaged history cannot be
      # rebuilt from the checkpoints, so say how to get a complete one.
      self.history = files.read_json(
        self.path,
        f"restore it, or delete {self.workdir} to train this stage afresh",
      )
    else:
      self.history = {"train": [], "eval": [], "final": {}}
    self._writer = None
    if distributed.is_primary():
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))

  def truncate(self, step: int):
    """Drops records after ``step`` (they belong to an unsaved future)."""
    for split in ("train", "eval"):
      self.history[split] = [
        r for r in self.history[split] if r["step"] <= step
      ]

  def write(self, split: str, step: int, metrics: dict):
    """Records scalars under ``split/`` at ``step``."""
    record = {"step": int(step)}
    for name, value in sorted(metrics.items()):
      record[name] = _plain(value)
      if isinstance(record[name], float) and self._writer is not None:
        self._writer.add_scalar(f"{split}/{name}", record[name], step)
    self.history.setdefault(split, []).append(record)
    self._flush()

  def write_final(self, metrics: dict):
    self.history["final"] = {k: _plain(v) for k, v in metrics.items()}
    self._flush()

  def _flush(self):
    files.write_json(self.path, self.history, indent=1)
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def write_texts(workdir: str | pathlib.Path, step: int, texts: dict) -> None:
  """Text summaries in ``workdir/tensorboard`` (TensorBoard's Text tab),
  e.g. generated samples beside their references: tag -> markdown."""
  if not texts or not distributed.is_primary():
    return
  # tensorboardX writes gs:// itself, given the scheme intact.
  writer = SummaryWriter(str(files.path(workdir) / TENSORBOARD_DIR))
  try:
    for tag, text in texts.items():
      writer.add_text(tag, str(text), int(step))
  finally:
    writer.close()
