r"""Converts an LLM checkpoint (HF safetensors dir, GGUF file or an offline
package) into an orbax checkpoint that ``restore_llm`` reads sharded.

  python launch/convert_checkpoint.py --source=smollm2 \
      --output=workdir/llm/smollm2
  python launch/convert_checkpoint.py --source=/path/to/hf_dir \
      --output=workdir/llm/mine --dtype=bfloat16

The output holds llm_config.json, params/ (orbax) and tokenizer/ (HF-style
tokenizer.json + tokenizer_config.json with the chat template).
"""

import ml_dtypes
import numpy as np
from absl import app, flags

from ilm_jax import console
from ilm_jax.convert.convert_llm import PACKAGED, convert_llm

_SOURCE = flags.DEFINE_string(
  "source",
  None,
  "HF checkpoint directory, .gguf file, or an offline package name: "
  + ", ".join(sorted(PACKAGED)),
)
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.")
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "Dtype of saved parameters."
)
flags.mark_flags_as_required(["source", "output"])

_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def main(argv):
  console.start(argv)
  config = convert_llm(_SOURCE.value, _OUTPUT.value, _DTYPES[_DTYPE.value])
  print(
    f"converted {_SOURCE.value} ({config.name}: {config.num_layers} layers, "
    f"width {config.embed_dim}, vocab {config.vocab_size}) to {_OUTPUT.value}"
  )


if __name__ == "__main__":
  app.run(main)
