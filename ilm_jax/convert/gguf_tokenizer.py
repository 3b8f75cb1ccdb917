"""Rebuilds a ``tokenizers`` tokenizer from the metadata of a GGUF file.

Two vocabulary kinds occur in the supported families:

* ``gpt2``: byte-level BPE with stored merges (SmolLM2, Llama 3, Qwen2). The
  pre-tokenizer is chosen by ``tokenizer.ggml.pre``; SmolLM2 splits digits
  individually before the GPT-2 byte-level split.
* ``llama``: SentencePiece BPE with byte fallback (Gemma). GGUF stores only
  each piece's score; the merges are recovered by ranking every split of a
  piece into two known pieces by the merged piece's score, the order in which
  SentencePiece's BPE applies them.
"""

from __future__ import annotations

import pathlib

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from ilm_jax.convert.gguf_checkpoint import open_gguf, read_metadata
from ilm_jax.convert.tokenizer import GEMMA_CHAT_TEMPLATE, Tokenizer

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL = 3
_USER_DEFINED = 4
_BYTE = 6

# Pre-tokenizer regexes of the byte-level BPE vocabularies.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _byte_level_pre_tokenizer(pre: str):
  if pre in ("llama-bpe", "llama3"):
    split = _LLAMA3_SPLIT
  elif pre == "qwen2":
    split = _QWEN2_SPLIT
  else:
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
      steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    return pre_tokenizers.Sequence(steps)
  return pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(
        tokenizers.Regex(split), behavior="isolated", invert=False
      ),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )


def _byte_level_bpe(meta: dict) -> tokenizers.Tokenizer:
  tokens = meta["tokenizer.ggml.tokens"]
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  backend = tokenizers.Tokenizer(
    models.BPE(
      vocab={token: i for i, token in enumerate(tokens)},
      merges=merges,
      fuse_unk=False,
    )
  )
  backend.pre_tokenizer = _byte_level_pre_tokenizer(
    meta.get("tokenizer.ggml.pre", "default")
  )
  backend.decoder = decoders.ByteLevel()
  return backend


def _sentencepiece_merges(tokens, scores, types) -> list[tuple[str, str]]:
  """Merges of a SentencePiece BPE vocabulary, highest-scoring result first."""
  ids = {t: i for i, t in enumerate(tokens)}
  ranked = []
  for piece_id, piece in enumerate(tokens):
    if types[piece_id] in (_CONTROL, _BYTE) or len(piece) < 2:
      continue
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in ids and right in ids:
        ranked.append((-scores[piece_id], ids[left], ids[right], left, right))
  ranked.sort()
  return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(meta: dict) -> tokenizers.Tokenizer:
  tokens = meta["tokenizer.ggml.tokens"]
  scores = meta["tokenizer.ggml.scores"]
  types = meta["tokenizer.ggml.token_type"]
  unk_id = meta.get("tokenizer.ggml.unknown_token_id")
  backend = tokenizers.Tokenizer(
    models.BPE(
      vocab={token: i for i, token in enumerate(tokens)},
      merges=_sentencepiece_merges(tokens, scores, types),
      unk_token=None if unk_id is None else tokens[unk_id],
      fuse_unk=True,
      byte_fallback=True,
    )
  )
  steps = [normalizers.Replace(" ", "\u2581")]
  if meta.get("tokenizer.ggml.add_space_prefix", False):
    steps.insert(0, normalizers.Prepend("\u2581"))
  backend.normalizer = normalizers.Sequence(steps)
  backend.decoder = decoders.Sequence(
    [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  )
  return backend


def tokenizer_from_gguf_metadata(meta: dict) -> Tokenizer:
  """A Tokenizer from decoded GGUF metadata (``gguf_checkpoint.metadata``).

  Raises:
    ValueError: for a vocabulary kind other than ``gpt2`` / ``llama``.
  """
  kind = meta.get("tokenizer.ggml.model")
  if kind == "gpt2":
    backend = _byte_level_bpe(meta)
  elif kind == "llama":
    backend = _sentencepiece_bpe(meta)
  else:
    raise ValueError(
      f"GGUF tokenizer.ggml.model {kind!r} is not supported (gpt2, llama)"
    )
  tokens = meta["tokenizer.ggml.tokens"]
  types = meta["tokenizer.ggml.token_type"]
  # Control tokens (e.g. <|im_start|>) must match whole and be skippable in
  # decoding; user-defined ones match whole but are ordinary text.
  backend.add_special_tokens(
    [
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind_id in zip(tokens, types)
      if kind_id == _CONTROL
    ]
  )
  backend.add_tokens(
    [
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t, kind_id in zip(tokens, types)
      if kind_id == _USER_DEFINED
    ]
  )
  eos_ids = [int(meta.get("tokenizer.ggml.eos_token_id", 2))]
  for end_of_turn in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
    token_id = backend.token_to_id(end_of_turn)
    if token_id is not None and token_id not in eos_ids:
      eos_ids.append(token_id)
  template = meta.get("tokenizer.chat_template")
  if template is None and meta.get("general.architecture", "").startswith(
    "gemma"
  ):
    template = GEMMA_CHAT_TEMPLATE
  bos = meta.get("tokenizer.ggml.bos_token_id")
  return Tokenizer(
    backend,
    bos_id=None if bos is None else int(bos),
    eos_ids=eos_ids,
    pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos_ids[0])),
    add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    chat_template=template,
  )


def load_gguf_tokenizer(path: str | pathlib.Path) -> Tokenizer:
  """The Tokenizer stored in a GGUF file's metadata."""
  reader = open_gguf(path)
  meta = read_metadata(path, reader, ("tokenizer.", "general.architecture"))
  try:
    return tokenizer_from_gguf_metadata(meta)
  except Exception as e:  # metadata that does not make a tokenizer
    raise ValueError(
      f"{path}: no usable tokenizer ({type(e).__name__}: {e}); the file is "
      "truncated or corrupt, or its vocabulary kind is not supported"
    ) from e
