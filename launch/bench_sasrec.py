r"""SASRec speed benchmark: our jitted Flax SASRec against a PyTorch one.

Both models have the very same shape (``config.sasrec``: width, blocks,
heads, dropout, ``max_len``; the item table shared as output layer, learned
positions, pre-LN blocks with causal attention, a final LayerNorm) and start
from the very same weights: the PyTorch model, written here after
``ilm_jax/models/sasrec.py``, is loaded with our initial parameters. Before
any timing, the script checks that the parameter counts are equal (assert),
that both score the catalogue alike and that both losses agree at the
initial weights with dropout off.

Timed, on the same CPU, in one process, in interleaved rounds so that load
from other processes hits both alike:

* a training step on the real batches of the dataset (``SASRecBatches``,
  the same numpy arrays for both): forward with dropout, the loss of
  ``--loss`` (full softmax cross-entropy over the catalogue on every
  non-padded position, or BCE against ``num_negatives`` sampled negatives),
  gradients, global-norm clipping and Adam with the config's schedule
  (ours: one jitted function with ``optax``, as the shared training loop
  runs it; theirs: ``torch.optim.Adam``). Both compute the loss densely on
  all B x L positions and weight out the padding. Reported per step (median
  over rounds, after compilation and warm-up) and per epoch (users / batch
  steps);
* evaluation: the full-catalogue scores of every user in one call (ours:
  the jitted ``pipeline.sasrec.scorer``; theirs under
  ``torch.inference_mode``).

JAX runs on one CPU device with XLA's intra-op thread pool, one thread per
core this process may run on (printed); PyTorch is timed with
``torch.set_num_threads(n)`` for each n of ``--torch_threads``. The last
line is the ratio of our time to PyTorch's at its fastest thread count
(< 1: ours is faster). Batch making is outside the timings of both. Each
side's model-FLOP utilisation is printed too: its FLOPs (``ilm_jax.mfu``)
per second over the float32 matmul peak measured in the same run. Writes
``bench_sasrec.json`` to --workdir.

  python launch/bench_sasrec.py --config=configs/default.py \
      --workdir=workdir/bench_sasrec
  python launch/bench_sasrec.py --config=configs/ml1m.py --loss=bce \
      --torch_threads=1,2,4 --workdir=workdir/bench_sasrec_ml1m
"""

import dataclasses
import functools
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from absl import app, flags
from ml_collections import config_flags
from torch import nn

from ilm_jax import console, files, mfu
from ilm_jax.data import load_split
from ilm_jax.data import sasrec as sasrec_data
from ilm_jax.models import sasrec as sasrec_model
from ilm_jax.pipeline import sasrec as sasrec_pipeline
from ilm_jax.train.optimizer import learning_rate_schedule, make_optimizer

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/default.py",
  "Experiment config file: its dataset and sasrec sections are used. "
  "Override fields with --config.<field>=<value>.",
  lock_config=True,
)
_LOSS = flags.DEFINE_enum(
  "loss",
  None,
  sorted(sasrec_model.LOSSES),
  "Training loss of both models (default: config.sasrec.loss).",
)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (median).")
_STEPS = flags.DEFINE_integer(
  "steps", 0, "Training steps per round and model; 0 = one epoch's worth."
)
_TORCH_THREADS = flags.DEFINE_list(
  "torch_threads",
  ["1", str(len(os.sched_getaffinity(0)))],
  "PyTorch intra-op thread counts to time.",
)
_EVAL_SPLIT = flags.DEFINE_enum(
  "eval_split", "test", ["valid", "test"], "Histories scored in evaluation."
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_sasrec", "Output dir.")
_HOST_MEMORY = console.define_host_memory()

# Parity tolerances (float32, the same weights): catalogue scores and loss.
_SCORE_ATOL = 1e-4
_LOSS_RTOL = 1e-4


class TorchBlock(nn.Module):
  """``models.sasrec.Block`` in PyTorch: pre-LN causal attention, then FFN."""

  def __init__(self, dim: int, heads: int, dropout: float):
    super().__init__()
    self.heads, self.dropout = heads, dropout
    self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
    # Ours has no biases in attention: D x D query, key, value and output.
    self.query = nn.Linear(dim, dim, bias=False)
    self.key = nn.Linear(dim, dim, bias=False)
    self.value = nn.Linear(dim, dim, bias=False)
    self.out = nn.Linear(dim, dim, bias=False)
    self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
    self.ffn_0 = nn.Linear(dim, dim)
    self.ffn_1 = nn.Linear(dim, dim)

  def forward(
    self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor
  ) -> torch.Tensor:
    """float32[B, L, D] -> float32[B, L, D], padding rows zero.

    Args:
      x: float32[B, L, D] inputs.
      valid: float32[B, L, 1], 0 at padding.
      mask: float32[B, 1, L, L] added to the attention logits: 0 where
        query t may see key s (s <= t, s not padding), -1e9 elsewhere.
    """
    b, length, dim = x.shape
    p = self.dropout if self.training else 0.0
    h = self.attention_norm(x)

    def heads(t):  # [B, L, D] -> [B, H, L, D / H]
      return t.view(b, length, self.heads, dim // self.heads).transpose(1, 2)

    # Scaled by 1 / sqrt(D / H); dropout on the attention weights, as ours.
    a = F.scaled_dot_product_attention(
      heads(self.query(h)),
      heads(self.key(h)),
      heads(self.value(h)),
      attn_mask=mask,
      dropout_p=p,
    )
    a = self.out(a.transpose(1, 2).reshape(b, length, dim))
    x = x + F.dropout(a, p, self.training)
    h = F.dropout(F.relu(self.ffn_0(self.ffn_norm(x))), p, self.training)
    x = x + F.dropout(self.ffn_1(h), p, self.training)
    return x * valid


class TorchSASRec(nn.Module):
  """``models.sasrec.SASRec`` in PyTorch (row 0 of the table is padding)."""

  def __init__(self, cfg: sasrec_model.SASRecConfig):
    super().__init__()
    self.cfg = cfg
    self.item_embedding = nn.Parameter(
      0.02 * torch.randn(cfg.num_items + 1, cfg.dim)
    )
    self.position_embedding = nn.Parameter(
      0.02 * torch.randn(cfg.max_len, cfg.dim)
    )
    self.blocks = nn.ModuleList(
      TorchBlock(cfg.dim, cfg.num_heads, cfg.dropout)
      for _ in range(cfg.num_blocks)
    )
    self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-8)

  def forward(self, items: torch.Tensor) -> torch.Tensor:
    """int64[B, L] right-aligned histories (``PAD`` before) ->
    float32[B, L, D] hidden states, padding rows zero."""
    length = items.shape[1]
    valid = items != sasrec_model.PAD
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    visible = causal[None, None] & valid[:, None, None, :]
    mask = torch.zeros(visible.shape).masked_fill(~visible, -1e9)
    valid = valid[..., None].float()
    x = self.item_embedding[items + 1] * math.sqrt(self.cfg.dim)
    x = x + self.position_embedding[-length:][None]
    x = F.dropout(x, self.cfg.dropout, self.training) * valid
    for block in self.blocks:
      x = block(x, valid, mask)
    return self.final_norm(x) * valid

  def item_vectors(self) -> torch.Tensor:
    """float32[I, D]: the output embedding of every catalogue item."""
    return self.item_embedding[1:]

  def score_all(self, items: torch.Tensor) -> torch.Tensor:
    """float32[B, I] next-item scores from int64[B, L] histories."""
    return self(items)[:, -1] @ self.item_vectors().T


def torch_loss(
  model: TorchSASRec, name: str, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
  """``models.sasrec.LOSSES[name]`` in PyTorch: the scalar mean loss over
  positions with a positive.

  Args:
    model: the module.
    name: "softmax" or "bce".
    batch: ``inputs int64[B, L]``, ``positives int64[B, L]`` and for "bce"
      ``negatives int64[B, L, N]``.
  """
  hidden = model(batch["inputs"])
  positives = batch["positives"]
  weight = (positives != sasrec_model.PAD).float()
  if name == "softmax":
    logits = hidden @ model.item_vectors().T  # [B, L, I]
    loss = F.cross_entropy(
      logits.reshape(-1, logits.shape[-1]),
      positives.clamp(min=0).reshape(-1),
      reduction="none",
    ).view_as(weight)
  else:
    pos = model.item_embedding[positives + 1]
    neg = model.item_embedding[batch["negatives"] + 1]
    pos_logit = (hidden * pos).sum(-1)
    neg_logit = torch.einsum("bld,blnd->bln", hidden, neg)
    loss = F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)
  return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def load_flax_params(model: TorchSASRec, params) -> None:
  """Copies our Flax parameters into the PyTorch model, in place."""
  d = model.cfg.dim

  def put(target, value, matrix=False):
    value = np.array(value, np.float32)  # a writable copy
    if matrix:  # ours: x @ kernel; torch.nn.Linear: x @ weight.T
      value = np.ascontiguousarray(value.reshape(d, d).T)
    with torch.no_grad():
      target.copy_(torch.from_numpy(value))

  def norm(torch_norm, flax_norm):
    put(torch_norm.weight, flax_norm["LayerNorm_0"]["scale"])
    put(torch_norm.bias, flax_norm["LayerNorm_0"]["bias"])

  put(model.item_embedding, params["item_embedding"])
  put(model.position_embedding, params["position_embedding"])
  for i, block in enumerate(model.blocks):
    p = params[f"block_{i}"]
    for name in ("query", "key", "value", "out"):
      put(getattr(block, name).weight, p["attention"][name], matrix=True)
    norm(block.attention_norm, p["attention_norm"])
    norm(block.ffn_norm, p["ffn_norm"])
    for name in ("ffn_0", "ffn_1"):
      put(getattr(block, name).weight, p[name]["kernel"], matrix=True)
      put(getattr(block, name).bias, p[name]["bias"])
  norm(model.final_norm, params["final_norm"])


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(v).long() for k, v in batch.items()}


def _check_optimiser(train) -> None:
  """The PyTorch side implements plain Adam with clipping and a schedule."""
  if float(train.weight_decay) != 0.0:
    raise ValueError(
      f"config.sasrec.train.weight_decay={train.weight_decay}: the PyTorch "
      "reference runs plain Adam; set --config.sasrec.train.weight_decay=0"
    )
  if str(train.freeze_regex):
    raise ValueError(
      f"config.sasrec.train.freeze_regex={train.freeze_regex!r}: the "
      "benchmark trains every parameter; set it to ''"
    )


def _median_ms(times: list[float], per: int = 1) -> float:
  return 1e3 * statistics.median(times) / per


def main(argv):
  console.start(argv, memory_policy=_HOST_MEMORY.value)
  config = _CONFIG.value
  scfg = config.sasrec
  train = scfg.train
  _check_optimiser(train)
  loss_name = _LOSS.value or str(scfg.loss)
  seed = int(train.seed)
  thread_counts = list(dict.fromkeys(int(n) for n in _TORCH_THREADS.value))
  split = load_split(config.dataset)
  model = sasrec_pipeline.build_model(scfg, split.num_items)
  cfg = model.config
  host_params, _ = sasrec_pipeline.init_params(model, seed)
  data = sasrec_data.SASRecBatches(
    split, int(scfg.batch_size), cfg.max_len, int(scfg.num_negatives), seed
  )
  steps_per_epoch = split.num_users / int(scfg.batch_size)
  steps = _STEPS.value or math.ceil(steps_per_epoch)
  fields = ("inputs", "positives")
  fields_per_row = 1  # item vectors each position is scored against (BCE)
  if loss_name == "bce":
    fields += ("negatives",)
    fields_per_row += int(scfg.num_negatives)
  # Every timed step of both models reads one of these (the same arrays).
  batches = [
    {k: v for k, v in next(data).items() if k in fields} for _ in range(steps)
  ]
  histories = sasrec_data.evaluation_histories(
    split, _EVAL_SPLIT.value, cfg.max_len
  )
  users = np.arange(split.num_users, dtype=np.int32)

  # The PyTorch model, from our initial weights.
  torch.manual_seed(seed)
  theirs = TorchSASRec(cfg)
  load_flax_params(theirs, host_params)
  ours_count = sum(int(np.size(x)) for x in jax.tree.leaves(host_params))
  torch_count = sum(p.numel() for p in theirs.parameters())
  print(f"parameters: ours {ours_count:,}, PyTorch {torch_count:,}")
  assert ours_count == torch_count, (ours_count, torch_count)

  # Parity at the initial weights: catalogue scores, and the loss with
  # dropout off (our loss functions always apply the model's dropout, so
  # ours is computed with a dropout-free copy of the model).
  score_fn = sasrec_pipeline.scorer(model, host_params, histories)
  ours_scores = np.asarray(score_fn(users))
  theirs.eval()
  with torch.inference_mode():
    torch_scores = theirs.score_all(torch.from_numpy(histories).long()).numpy()
  score_diff = float(np.abs(ours_scores - torch_scores).max())
  plain = sasrec_model.SASRec(dataclasses.replace(cfg, dropout=0.0))
  plain_loss = jax.jit(sasrec_pipeline.loss_function(plain, loss_name))
  ours_loss0 = float(
    plain_loss(host_params, None, batches[0], jax.random.key(seed))[0]
  )
  with torch.inference_mode():
    torch_loss0 = float(torch_loss(theirs, loss_name, _to_torch(batches[0])))
  print(
    f"parity at init: max |score diff| {score_diff:.2e}, {loss_name} loss "
    f"(dropout off) ours {ours_loss0:.6f}, PyTorch {torch_loss0:.6f}"
  )
  assert score_diff < _SCORE_ATOL, score_diff
  assert math.isclose(ours_loss0, torch_loss0, rel_tol=_LOSS_RTOL)
  theirs.train()

  # Ours: one jitted step, as the shared loop builds it (same rng, loss and
  # optimiser), on one CPU device.
  loss_fn = sasrec_pipeline.loss_function(model, loss_name)
  optimizer = make_optimizer(train, host_params)
  # Copies: the step donates its inputs, which must not alias host_params.
  params = jax.tree.map(jnp.array, host_params)
  opt_state = optimizer.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, step, batch):
    rng = jax.random.fold_in(jax.random.key(seed), step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(params, None, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Theirs: the same schedule, clipping and Adam moments. It takes one
  # warm-up round and the timed rounds at every thread count.
  total = (1 + _ROUNDS.value) * len(thread_counts) * steps
  lrs = np.asarray(
    jax.jit(jax.vmap(learning_rate_schedule(train)))(jnp.arange(total)),
    np.float64,
  ).tolist()
  adam = torch.optim.Adam(
    theirs.parameters(),
    lr=lrs[0],
    betas=(float(train.adam_b1), float(train.adam_b2)),
    eps=1e-8,
  )
  clip = float(train.grad_clip_norm)
  torch_histories = torch.from_numpy(histories).long()
  counters = {"ours": 0, "torch": 0}  # steps taken, for rng and schedule
  losses = {"ours": [], "torch": []}

  def ours_round():
    nonlocal params, opt_state
    for batch in batches:
      params, opt_state, loss = train_step(
        params, opt_state, counters["ours"], batch
      )
      counters["ours"] += 1
    losses["ours"].append(float(loss))  # waits for the last step

  def torch_round():
    for batch in batches:
      adam.param_groups[0]["lr"] = lrs[counters["torch"]]
      adam.zero_grad(set_to_none=True)
      loss = torch_loss(theirs, loss_name, _to_torch(batch))
      loss.backward()
      if clip > 0:
        nn.utils.clip_grad_norm_(theirs.parameters(), clip)
      adam.step()
      counters["torch"] += 1
    losses["torch"].append(loss.item())

  def ours_eval():
    score_fn(users).block_until_ready()

  def torch_eval():
    theirs.eval()
    with torch.inference_mode():
      theirs.score_all(torch_histories)
    theirs.train()

  def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  peak = mfu.measure_matmul_peak(jnp.float32)  # both models are float32
  outputs = split.num_items if loss_name == "softmax" else fields_per_row
  flops = {
    "step": mfu.sasrec_step_flops(
      cfg.dim, cfg.num_blocks, int(scfg.batch_size), cfg.max_len, outputs
    ),
    "eval": mfu.sasrec_scoring_flops(
      cfg.dim, cfg.num_blocks, len(users), cfg.max_len, split.num_items
    ),
  }
  # Warm-up: compiles ours, lets PyTorch settle its kernels per thread count.
  first_round_s = timed(ours_round)
  ours_eval()
  for n in thread_counts:
    torch.set_num_threads(n)
    torch_round()
    torch_eval()
  times = {"ours_step": [], "ours_eval": []}
  for n in thread_counts:
    times[f"torch{n}_step"], times[f"torch{n}_eval"] = [], []
  for _ in range(_ROUNDS.value):
    times["ours_step"].append(timed(ours_round))
    times["ours_eval"].append(timed(ours_eval))
    for n in thread_counts:
      torch.set_num_threads(n)
      times[f"torch{n}_step"].append(timed(torch_round))
      times[f"torch{n}_eval"].append(timed(torch_eval))

  def figures(name):
    ms = _median_ms(times[f"{name}_step"], steps)
    eval_ms = _median_ms(times[f"{name}_eval"])
    step_use = mfu.utilisation(flops["step"], ms / 1e3, peak)
    eval_use = mfu.utilisation(flops["eval"], eval_ms / 1e3, peak)
    return {
      "ms_per_step": ms,
      "s_per_epoch": ms * steps_per_epoch / 1e3,
      "eval_ms": eval_ms,
      "step_gflops": step_use["gflops"],
      "step_mfu": step_use["mfu"],
      "eval_gflops": eval_use["gflops"],
      "eval_mfu": eval_use["mfu"],
    }

  ours = figures("ours")
  theirs_figures = {n: figures(f"torch{n}") for n in thread_counts}
  best_step = min(thread_counts, key=lambda n: theirs_figures[n]["ms_per_step"])
  best_eval = min(thread_counts, key=lambda n: theirs_figures[n]["eval_ms"])
  step_ratio = ours["ms_per_step"] / theirs_figures[best_step]["ms_per_step"]
  eval_ratio = ours["eval_ms"] / theirs_figures[best_eval]["eval_ms"]
  xla_threads = len(os.sched_getaffinity(0))

  print(
    f"{split.name}: {split.num_users} users, {split.num_items} items; "
    f"SASRec d={cfg.dim}, {cfg.num_blocks} blocks, {cfg.num_heads} head(s), "
    f"L={cfg.max_len}, dropout {cfg.dropout}, {loss_name} loss, batch "
    f"{scfg.batch_size} ({steps_per_epoch:.2f} steps/epoch); "
    f"{_ROUNDS.value} rounds of {steps} steps, medians"
  )
  print(
    f"threads: ours = XLA CPU, {xla_threads} intra-op threads (one per core "
    f"this process may use; {jax.devices()[0]}); PyTorch = "
    f"torch.set_num_threads(n), n in {thread_counts}"
  )
  print(
    f"matmul peak {peak.gflops:.1f} GFLOP/s (float32 {peak.size}^3, measured "
    f"in this run); FLOPs per step {flops['step']:.3g}, per evaluation "
    f"{flops['eval']:.3g}; MFU = achieved GFLOP/s / peak"
  )
  print(
    f"{'':16s} {'ms/step':>9s} {'s/epoch':>9s} {'eval ms':>9s} "
    f"{'step MFU':>9s} {'eval MFU':>9s}"
  )
  rows = [("ours (JAX)", ours)] + [
    (f"PyTorch n={n}", theirs_figures[n]) for n in thread_counts
  ]
  for label, r in rows:
    print(
      f"{label:16s} {r['ms_per_step']:9.2f} {r['s_per_epoch']:9.3f} "
      f"{r['eval_ms']:9.2f} {r['step_mfu']:9.2%} {r['eval_mfu']:9.2%}"
    )
  print(
    f"final train loss: ours {losses['ours'][-1]:.4f}, PyTorch "
    f"{losses['torch'][-1]:.4f} (same data; dropout draws differ)"
  )
  result = {
    "dataset": split.name,
    "users": split.num_users,
    "items": split.num_items,
    "model": {
      "dim": cfg.dim,
      "num_blocks": cfg.num_blocks,
      "num_heads": cfg.num_heads,
      "max_len": cfg.max_len,
      "dropout": cfg.dropout,
    },
    "loss": loss_name,
    "batch_size": int(scfg.batch_size),
    "steps_per_epoch": steps_per_epoch,
    "steps_per_round": steps,
    "rounds": _ROUNDS.value,
    "parameters": {"ours": ours_count, "torch": torch_count},
    "parity": {
      "max_score_diff": score_diff,
      "loss_dropout_off": {"ours": ours_loss0, "torch": torch_loss0},
    },
    "threads": {"xla_cpu": xla_threads, "torch": thread_counts},
    "matmul_peak": dataclasses.asdict(peak),
    "flops": flops,
    "cpu": {"count": os.cpu_count(), "processor": platform.processor()},
    "versions": {"jax": jax.__version__, "torch": torch.__version__},
    "ours": {**ours, "first_round_s": first_round_s},
    "torch": {str(n): r for n, r in theirs_figures.items()},
    "final_loss": {k: v[-1] for k, v in losses.items()},
    "ratio": {
      "step": step_ratio,
      "step_torch_threads": best_step,
      "eval": eval_ratio,
      "eval_torch_threads": best_eval,
    },
    "seconds": times,
  }
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "bench_sasrec.json")
  files.write_json(path, result)
  print(f"wrote {path}")
  print(
    f"ratio ours/PyTorch (time, < 1: ours faster): training "
    f"{step_ratio:.2f}x (step and epoch; PyTorch n={best_step}), "
    f"evaluation {eval_ratio:.2f}x (PyTorch n={best_eval})"
  )


if __name__ == "__main__":
  app.run(main)
