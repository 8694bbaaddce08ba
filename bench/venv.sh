#!/usr/bin/env bash
# Creates (once) the Python environment the benchmarks compare against, in
# ~/.cache/brisk/torch-venv, and prints its python.
#   bench/venv.sh          PyTorch and transformers
#   bench/venv.sh gensim   gensim and scipy only (the word-vector anchor)
set -euo pipefail
venv="${BRISK_TORCH_VENV:-$HOME/.cache/brisk/torch-venv}"
want=${1:-torch}
case "$want" in
    torch) check='import torch, transformers'; packages="torch transformers safetensors numpy" ;;
    gensim) check='import gensim, scipy'; packages="gensim scipy numpy" ;;
    *) echo "bench/venv.sh: unknown package set $want (torch or gensim)" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
fi
if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "installing $packages into $venv (from PyPI, once)" >&2
    "$venv/bin/pip" install --quiet $packages >&2
fi
echo "$venv/bin/python"
