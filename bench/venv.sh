#!/usr/bin/env bash
# Creates (once) the Python environment the benchmarks compare against:
# PyTorch and transformers in ~/.cache/brisk/torch-venv. Prints its python.
set -euo pipefail
venv="${BRISK_TORCH_VENV:-$HOME/.cache/brisk/torch-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
    echo "creating $venv (PyTorch from PyPI, several GB, once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet torch transformers safetensors numpy >&2
fi
echo "$venv/bin/python"
