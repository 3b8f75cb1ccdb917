"""Model-FLOP utilisation: FLOP counts of the timed models, a measured peak.

MFU = (model FLOPs of a call / its seconds) / peak. The peak is not a
datasheet figure: ``measure_matmul_peak`` times a large square ``jnp``
matmul in the model's dtype on the same device, in the same run, with the
same threads (on CPU, XLA's pool of one thread per core the process may
use). MFU thus says how much of what this machine's matmuls actually reach
a model gets; near 1, a step can only get faster by doing fewer FLOPs.

How FLOPs are counted (as in PaLM's appendix B):

* 2 FLOPs per multiply-add of every matmul: dense layers, the attention
  scores and weighted sums over the whole L x L (masked entries included:
  both our decoder and PyTorch's SDPA compute them), output heads at the
  positions where logits are taken. Elementwise work (norms, softmax,
  activations, RoPE), embedding lookups and optimiser updates are left out.
* Backward of a matmul with a trainable weight: 2x its forward (the input's
  and the weight's gradient). With a frozen weight (the stage-2 LLM): 1x,
  the input's gradient only, since no framework computes a gradient nobody
  asked for (JAX differentiates the encoder's params only; PyTorch skips
  ``requires_grad=False`` weights). Attention's two matmuls multiply two
  activations: 2x their forward, trainable or not.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from ilm_jax.models.llm.config import LOCAL, LlmConfig
from ilm_jax.models.qformer import QFormerConfig

# The peak's matmul grows (doubling n) until one call takes this long, so
# dispatch overhead is negligible on an accelerator too.
_MIN_CALL_SECONDS = 0.05
_FIRST_SIZE = 512
_MAX_SIZE = 16384


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
  """The best measured throughput of one square matmul.

  Attributes:
    gflops: best of ``repeats`` calls, GFLOP/s (2 n^3 FLOPs a call).
    size: n.
    dtype: operand dtype (XLA's default precision, as the models use).
    device: the device it ran on.
  """

  gflops: float
  size: int
  dtype: str
  device: str


def measure_matmul_peak(
  dtype=jnp.float32, repeats: int = 5, mesh: jax.sharding.Mesh | None = None
) -> MatmulPeak:
  """Times ``a @ b`` for float[n, n] operands on the default device.

  Args:
    dtype: operand dtype; the dtype the measured model computes in.
    repeats: timed calls at the final n (after compiling); the best counts.
    mesh: when the timed work runs on several devices at once (e.g. one CPU
      device per thread), one n x n matmul per device of the mesh, all at
      once; the peak is their total.

  Returns:
    A MatmulPeak.
  """
  matmul = jax.jit(jnp.matmul)
  copies = 1 if mesh is None else mesh.devices.size
  size = _FIRST_SIZE
  while True:
    keys = jax.random.split(jax.random.key(size), 2)
    shape = (size, size) if mesh is None else (copies, size, size)
    a, b = (jax.random.normal(k, shape, dtype) for k in keys)
    if mesh is not None:
      spread = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(mesh.axis_names)
      )
      a, b = jax.device_put(a, spread), jax.device_put(b, spread)
    matmul(a, b).block_until_ready()  # compiles for this n
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, b).block_until_ready()
      best = min(best, time.perf_counter() - start)
    if best >= _MIN_CALL_SECONDS or size >= _MAX_SIZE:
      break
    size *= 2
  return MatmulPeak(
    gflops=2 * copies * size**3 / best / 1e9,
    size=size,
    dtype=jnp.dtype(dtype).name,
    device=str(jax.devices()[0]),
  )


def utilisation(flops: float, seconds: float, peak: MatmulPeak) -> dict:
  """{"gflops": achieved GFLOP/s, "mfu": achieved / peak} of one call."""
  gflops = flops / seconds / 1e9
  return {"gflops": gflops, "mfu": gflops / peak.gflops}


@dataclasses.dataclass(frozen=True)
class Forward:
  """Forward FLOPs, split by how their backward costs.

  Attributes:
    weights: matmuls of activations with weights.
    attention: matmuls of two activations (scores, weighted sums).
  """

  weights: float
  attention: float

  @property
  def total(self) -> float:
    return self.weights + self.attention


def decoder_forward(
  config: LlmConfig, batch: int, length: int, context: int | None = None
) -> Forward:
  """The decoder's blocks over ``batch`` x ``length`` new tokens.

  Args:
    config: the decoder (Llama and Gemma: gated MLP of three matrices).
    batch: B rows.
    length: T new tokens per row.
    context: keys each new token attends to (default T, no cache); local
      layers see at most their sliding window.

  Returns:
    Forward FLOPs of all layers (no output head: ``head_flops``).
  """
  d, hd = config.embed_dim, config.head_dim
  q, kv = config.num_heads * hd, config.num_kv_heads * hd
  per_token = 2 * (d * q + 2 * d * kv + q * d + 3 * d * config.mlp_dim)
  context = length if context is None else context
  # Keys attended to, summed over layers.
  keys = sum(
    min(context, config.sliding_window) if kind == LOCAL else context
    for kind in config.layer_types
  )
  tokens = batch * length
  # Scores q.k and the weighted sum of values: 2 * keys * q each per token.
  return Forward(tokens * per_token * config.num_layers, tokens * 4 * q * keys)


def head_flops(config: LlmConfig, positions: int) -> float:
  """The output head (D x V) at ``positions`` positions in all."""
  return 2 * positions * config.embed_dim * config.vocab_size


def qformer_forward(qcfg: QFormerConfig, entities: int, llm_width: int):
  """The Q-Former over ``entities`` CF vectors, plus the linear adapter.

  Per entity: the CF projection (d -> T x Dq), per layer self-attention
  among the K queries, cross-attention to the T CF tokens in every
  ``cross_attention_freq``-th layer, the queries' feed-forward block; then
  the adapter (Dq -> D) on the K outputs.

  Returns:
    Forward.
  """
  dq, k, t = qcfg.width, qcfg.num_queries, qcfg.num_cf_tokens
  f = qcfg.bert.intermediate_size
  weights = 2 * qcfg.cf_dim * t * dq + 2 * k * dq * llm_width
  attention = 0
  for layer in range(qcfg.bert.num_hidden_layers):
    weights += 2 * 4 * k * dq * dq + 2 * 2 * k * dq * f
    attention += 2 * 2 * k * k * dq
    if qcfg.has_cross_attention(layer):
      # Queries and output on K positions, keys and values on T.
      weights += 2 * 2 * k * dq * dq + 2 * 2 * t * dq * dq
      attention += 2 * 2 * k * t * dq
  return Forward(entities * weights, entities * attention)


def stage2_step_flops(
  config: LlmConfig,
  qcfg: QFormerConfig | None,
  *,
  batch: int,
  length: int,
  entities: int,
  logit_positions: int,
) -> float:
  """One stage-2 training step: forward and backward, frozen LLM.

  The LLM: forward over B x L, input gradients only (weights 1x,
  attention 2x); its head at the positions the loss reads, forward and
  input gradient. The Q-Former and adapter train: 3x their forward. The
  splice, list-token pooling and soft prompt are copies, not counted.

  Args:
    config: the frozen LLM.
    qcfg: the Q-Former (None: a variant without one, counted as 0).
    batch: B prompts.
    length: L, the bucket's padded length.
    entities: E, rows of the batch's entity table (padding included).
    logit_positions: per row, positions with logits (answer targets plus
      re-ranking candidates' positions, ``P + N x M``).

  Returns:
    FLOPs.
  """
  llm = decoder_forward(config, batch, length)
  head = head_flops(config, batch * logit_positions)
  frozen = 2 * llm.weights + 3 * llm.attention + 2 * head
  if qcfg is None:
    return frozen
  return frozen + 3 * qformer_forward(qcfg, entities, config.embed_dim).total


def prefill_flops(config: LlmConfig, batch: int, length: int) -> float:
  """A forward over ``batch`` x ``length`` prompt tokens, logits at the
  last position of each row."""
  return decoder_forward(config, batch, length).total + head_flops(
    config, batch
  )


def decode_flops(
  config: LlmConfig, batch: int, prompt: int, new_tokens: int
) -> float:
  """Greedy decoding of ``new_tokens`` after a ``prompt``-token prefill
  (the prefill itself not included): one token per row and step, attending
  to everything before it."""
  total = 0.0
  for step in range(new_tokens):
    total += decoder_forward(config, batch, 1, prompt + step + 1).total
  return total + head_flops(config, batch * new_tokens)


def sasrec_forward(
  dim: int, num_blocks: int, rows: int, length: int, outputs: int
) -> float:
  """SASRec over ``rows`` x ``length`` positions, each position scored
  against ``outputs`` item vectors (the catalogue for the softmax loss,
  1 + negatives for BCE; 0 for none).

  Per block: query, key, value and output D x D, two D x D FFN layers,
  causal attention over the whole L x L.
  """
  per_token = num_blocks * (2 * 6 * dim * dim + 2 * 2 * length * dim)
  return rows * length * (per_token + 2 * dim * outputs)


def sasrec_step_flops(
  dim: int, num_blocks: int, batch: int, length: int, outputs: int
) -> float:
  """A SASRec training step: everything trains, so 3x the forward."""
  return 3 * sasrec_forward(dim, num_blocks, batch, length, outputs)


def sasrec_scoring_flops(
  dim: int, num_blocks: int, users: int, length: int, items: int
) -> float:
  """Full-catalogue scores of ``users``: the forward over their histories,
  then the last position against every item."""
  return sasrec_forward(dim, num_blocks, users, length, 0) + (
    2 * users * dim * items
  )


def als_fit_flops(
  nonzeros: int,
  users: int,
  items: int,
  dim: int,
  sweeps: int,
  solver: str,
  cg_steps: int = 3,
) -> float:
  """FLOPs of an implicit-ALS fit, the same for every implementation.

  Per half-sweep that solves ``rows`` against ``other`` rows: the other
  side's Gram matrix (2 other d^2), then either the exact normal equations
  (the nnz rank-one updates 2 nnz d^2, the right-hand sides 2 nnz d, a
  Cholesky factorisation d^3 / 3 and two triangular solves 2 d^2 per row) or
  ``cg_steps`` conjugate-gradient steps plus the initial residual, each a
  product with the row's matrix (4 nnz d over its interactions and 2 d^2 for
  the Gram term per row). Counted over the distinct (user, item) pairs, not
  over any layout's padding.
  """
  d = dim

  def half(rows: int, other: int) -> float:
    gram = 2.0 * other * d * d
    if solver == "cholesky":
      return (
        gram
        + 2.0 * nonzeros * d * d
        + 2.0 * nonzeros * d
        + rows * (d**3 / 3 + 2.0 * d * d)
      )
    products = (cg_steps + 1) * (4.0 * nonzeros * d + 2.0 * rows * d * d)
    return gram + 2.0 * nonzeros * d + products

  return sweeps * (half(users, items) + half(items, users))
