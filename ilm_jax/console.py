"""What an entry point prints: progress bars and results, not library chatter.

Orbax, JAX and our own modules log through absl at INFO; a checkpoint save
alone prints a dozen lines, which scrolls the progress bars away. Entry
points call ``quiet_by_default`` first thing in ``main``: library logs then
show at WARNING and above, unless the user asks for more with absl's own
``--verbosity=0`` (or ``-v 0``; higher values add debug levels).
"""

from __future__ import annotations

from absl import flags, logging


def quiet_by_default() -> None:
  """WARNING-level logging unless --verbosity was given on the command line."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
