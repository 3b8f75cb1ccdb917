"""Hyper-parameters of the decoder-only LLM, and presets of real models.

One frozen dataclass covers the Llama family (Llama 2/3, SmolLM2, Mistral,
Qwen2) and the Gemma family (Gemma 1/2/3): they differ only in switches such as
q/k/v biases, sandwich norms, q/k norms, soft-capping, sliding-window layers
and the RoPE variant. The dataclass is hashable so it can be a Linen module
attribute and a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math

# Layer kinds: a "global" layer attends to the whole prefix, a "local" layer
# only to the last ``sliding_window`` positions.
GLOBAL = "global"
LOCAL = "local"

ACTIVATIONS = ("silu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary position embedding of one layer kind.

  Attributes:
    theta: base of the geometric frequency progression.
    kind: ``"default"``, ``"linear"`` (positions divided by ``factor``) or
      ``"llama3"`` (Llama-3.1 frequency-dependent scaling).
    factor: scaling factor of the ``linear`` and ``llama3`` kinds.
    low_freq_factor: Llama-3 wavelength threshold (long wavelengths scaled).
    high_freq_factor: Llama-3 wavelength threshold (short ones kept).
    original_max_position: context length the model was pre-trained with.
  """

  theta: float = 10_000.0
  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def __post_init__(self):
    if self.kind not in ("default", "linear", "llama3"):
      raise ValueError(f"RopeConfig.kind: unsupported RoPE kind {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """Architecture of a decoder-only transformer.

  Attributes:
    name: a label for logs.
    vocab_size: rows of the token-embedding table.
    embed_dim: width of the residual stream (HF ``hidden_size``).
    mlp_dim: hidden width of the gated MLP (HF ``intermediate_size``).
    num_layers: decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention when fewer).
    head_dim: width of one head.
    activation: ``"silu"`` (Llama) or ``"gelu_tanh"`` (Gemma).
    norm_eps: epsilon of every RMSNorm.
    norm_plus_one: RMSNorm multiplies by ``1 + scale`` (Gemma) instead of
      ``scale`` (Llama); parameters keep the checkpoint's convention.
    qkv_bias: q/k/v projections have biases (Qwen2).
    qk_norm: RMSNorm over ``head_dim`` of queries and keys (Gemma 3).
    sandwich_norms: extra norms after attention and after the MLP, before the
      residual add (Gemma 2/3).
    scale_embeddings: token embeddings are multiplied by ``sqrt(embed_dim)``
      (Gemma). ``Decoder.embed`` applies it, so input embeddings fed to the
      decoder live in the scaled space.
    tie_embeddings: the output head reuses the embedding table.
    query_scale: multiplier of q.k; ``None`` means ``head_dim ** -0.5``.
    attn_softcap: ``cap * tanh(logits / cap)`` on attention logits, or None.
    final_softcap: the same on the output logits, or None.
    layer_types: one of ``GLOBAL`` / ``LOCAL`` per layer.
    sliding_window: a local layer's query at position p sees keys at
      positions q with ``p - q < sliding_window``.
    rope: RoPE of global layers.
    local_rope: RoPE of local layers; ``None`` means the same as ``rope``.
    max_position: longest context the checkpoint supports.
    bos_id: beginning-of-sequence token id.
    eos_ids: token ids that end generation.
    pad_id: padding token id.
  """

  name: str = "llm"
  vocab_size: int = 256
  embed_dim: int = 64
  mlp_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  activation: str = "silu"
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  qkv_bias: bool = False
  qk_norm: bool = False
  sandwich_norms: bool = False
  scale_embeddings: bool = False
  tie_embeddings: bool = True
  query_scale: float | None = None
  attn_softcap: float | None = None
  final_softcap: float | None = None
  layer_types: tuple[str, ...] | None = None
  sliding_window: int | None = None
  rope: RopeConfig = RopeConfig()
  local_rope: RopeConfig | None = None
  max_position: int = 8192
  bos_id: int | None = 1
  eos_ids: tuple[int, ...] = (2,)
  pad_id: int = 0

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(
        f"LlmConfig.activation: {self.activation!r} not in {ACTIVATIONS}"
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"LlmConfig: num_heads={self.num_heads} is not a multiple of "
        f"num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"LlmConfig.head_dim={self.head_dim} must be even")
    types = self.layer_types
    if types is None:
      object.__setattr__(self, "layer_types", (GLOBAL,) * self.num_layers)
    else:
      object.__setattr__(self, "layer_types", tuple(types))
    if len(self.layer_types) != self.num_layers:
      raise ValueError(
        f"LlmConfig.layer_types has {len(self.layer_types)} entries for "
        f"{self.num_layers} layers"
      )
    bad = set(self.layer_types) - {GLOBAL, LOCAL}
    if bad:
      raise ValueError(f"LlmConfig.layer_types: unknown kinds {sorted(bad)}")
    if LOCAL in self.layer_types and not self.sliding_window:
      raise ValueError("LlmConfig: local layers need a sliding_window")
    object.__setattr__(self, "eos_ids", tuple(self.eos_ids))

  @property
  def attention_scale(self) -> float:
    if self.query_scale is not None:
      return self.query_scale
    return self.head_dim**-0.5

  @property
  def embedding_scale(self) -> float:
    return math.sqrt(self.embed_dim) if self.scale_embeddings else 1.0

  def replace(self, **changes) -> LlmConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    """A JSON-serialisable dict; ``LlmConfig.from_dict`` inverts it."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict) -> LlmConfig:
    """Rebuilds a config written by ``to_dict``.

    Raises:
      ValueError: naming fields the dict has that LlmConfig does not.
    """
    data = dict(data)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"LlmConfig.from_dict: unknown fields {sorted(unknown)}")
    for key in ("rope", "local_rope"):
      if isinstance(data.get(key), dict):
        data[key] = RopeConfig(**data[key])
    for key in ("layer_types", "eos_ids"):
      if data.get(key) is not None:
        data[key] = tuple(data[key])
    return cls(**data)


def _gemma_style(**kwargs) -> dict:
  """Switches shared by every Gemma generation."""
  base = dict(
    activation="gelu_tanh",
    norm_plus_one=True,
    scale_embeddings=True,
    tie_embeddings=True,
    bos_id=2,
    eos_ids=(1,),
    pad_id=0,
  )
  base.update(kwargs)
  return base


def smollm2_135m() -> LlmConfig:
  """SmolLM2-135M(-Instruct): Llama architecture, 30 layers, 576 wide."""
  return LlmConfig(
    name="smollm2-135m",
    vocab_size=49152,
    embed_dim=576,
    mlp_dim=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    norm_eps=1e-5,
    tie_embeddings=True,
    rope=RopeConfig(theta=100_000.0),
    max_position=8192,
    bos_id=1,
    eos_ids=(2,),
    pad_id=2,
  )


def llama3_8b() -> LlmConfig:
  """Llama-3.1-8B (8,030,261,248 parameters) with Llama-3 RoPE scaling."""
  return LlmConfig(
    name="llama3-8b",
    vocab_size=128256,
    embed_dim=4096,
    mlp_dim=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    norm_eps=1e-5,
    tie_embeddings=False,
    rope=RopeConfig(
      theta=500_000.0,
      kind="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position=8192,
    ),
    max_position=131072,
    bos_id=128000,
    eos_ids=(128001, 128008, 128009),
    pad_id=128004,
  )


def gemma_2b() -> LlmConfig:
  """Gemma (1) 2B (2,506,172,416 parameters): multi-query attention."""
  return LlmConfig(
    name="gemma-2b",
    **_gemma_style(
      vocab_size=256000,
      embed_dim=2048,
      mlp_dim=16384,
      num_layers=18,
      num_heads=8,
      num_kv_heads=1,
      head_dim=256,
      norm_eps=1e-6,
      rope=RopeConfig(theta=10_000.0),
      max_position=8192,
    ),
  )


def gemma3_270m() -> LlmConfig:
  """Gemma 3 270M: 18 layers, five local layers per global one."""
  num_layers = 18
  types = tuple(
    GLOBAL if (i + 1) % 6 == 0 else LOCAL for i in range(num_layers)
  )
  return LlmConfig(
    name="gemma3-270m",
    **_gemma_style(
      vocab_size=262144,
      embed_dim=640,
      mlp_dim=2048,
      num_layers=num_layers,
      num_heads=4,
      num_kv_heads=1,
      head_dim=256,
      norm_eps=1e-6,
      qk_norm=True,
      sandwich_norms=True,
      query_scale=256**-0.5,
      layer_types=types,
      sliding_window=512,
      rope=RopeConfig(theta=1_000_000.0),
      local_rope=RopeConfig(theta=10_000.0),
      max_position=32768,
      eos_ids=(1, 106),
    ),
  )


PRESETS = {
  "smollm2-135m": smollm2_135m,
  "llama3-8b": llama3_8b,
  "gemma-2b": gemma_2b,
  "gemma3-270m": gemma3_270m,
}


def preset(name: str) -> LlmConfig:
  """The preset called ``name`` (a key of ``PRESETS``)."""
  if name not in PRESETS:
    raise KeyError(f"unknown LLM preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]()
