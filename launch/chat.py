r"""Talks with a trained ILM: name films you liked, ask in words.

Restores the stage-2 model, CF table, catalogue and tokenizer of a workdir
written by launch/train.py, then reads one turn per line (from --script or
stdin) and prints, per turn, the k best titles with their ids and the
model's description of each. Liked / disliked films and the wish carry over
from turn to turn; titles may be misspelt or lack their year.

A turn is clauses separated by '|':
  liked: Alien; Terminater 2     (titles separated by ';')
  disliked: Titanic
  want: something funnier        (a clause without a keyword is a wish too)
  user: 42                       (speak as the dataset's user 42)
  reset

Examples:
  python launch/chat.py --workdir=workdir/default
  python launch/chat.py --workdir=workdir/default --script=tests/data/chat.txt
"""

import sys

from absl import app, flags

from ilm_jax import console

_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/default", "A workdir launch/train.py trained."
)
_K = flags.DEFINE_integer("k", 10, "Titles per answer.", lower_bound=1)
_SCRIPT = flags.DEFINE_string(
  "script",
  "",
  "Replay the turns of this file (one per line, '#' comments) instead of "
  "reading stdin.",
)
_MODE = flags.DEFINE_enum(
  "mode",
  "rerank",
  ["rerank", "generate"],
  "rerank: the model reorders the CF retriever's top candidates (the "
  "evaluated recipe); generate: beam search over the whole catalogue.",
)
_RETRIEVER = flags.DEFINE_enum(
  "retriever",
  "als",
  ["als", "sasrec"],
  "Who lists the candidates: als (the CF table, as training lists) or "
  "sasrec (the workdir's trained SASRec: --config.eval.baselines with "
  "'sasrec', the CPU recipe's default).",
)
_REASONS = flags.DEFINE_bool(
  "reasons",
  True,
  "Print the model's description of each recommended title (one greedy "
  "decoding per new title).",
)
_CACHE = console.define_compilation_cache()


def _lines(script: str):
  if script:
    with open(script, encoding="utf-8") as f:
      yield from enumerate(f, 1)
    return
  interactive = sys.stdin.isatty()
  n = 0
  while True:
    if interactive:
      print("you> ", end="", flush=True)
    line = sys.stdin.readline()
    if not line:
      return
    n += 1
    yield n, line


def main(argv):
  console.start(argv, _CACHE.value)
  from ilm_jax.serve.chat import Chat
  from ilm_jax.serve.recommender import Recommender

  recommender = Recommender.from_workdir(
    _WORKDIR.value, retriever=_RETRIEVER.value
  )
  print(
    f"ILM of {_WORKDIR.value} (stage-2 step {recommender.step}, "
    f"{recommender.num_items} items); k={_K.value}, mode={_MODE.value}, "
    f"retriever={_RETRIEVER.value}",
    flush=True,
  )
  chat = Chat(recommender, _K.value, _MODE.value, _REASONS.value)
  where = _SCRIPT.value or "stdin"
  for line_no, line in _lines(_SCRIPT.value):
    try:
      out = chat.turn(line)
    except (ValueError, KeyError) as e:
      # A bad turn is reported and the conversation goes on.
      print(f"{where}:{line_no}: {e}", flush=True)
      continue
    if out is not None:
      print("\n".join(out), flush=True)


if __name__ == "__main__":
  app.run(main)
