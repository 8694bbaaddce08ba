#!/usr/bin/env bash
# Builds what bench/gpu/check.sh runs on a GPU machine that has no Rust
# toolchain, on this machine, which needs no GPU and no CUDA toolkit:
# the CUDA build (`--features cuda`) of `brisk`, of the `mlm-step`
# benchmark and of the device tests, stripped and packed into
# bench/gpu/bin.tar.xz (git-ignored; measured on 2 cores from an empty
# target folder: 31 minutes, 18 of them for the two binaries, mostly
# candle's CUDA kernels; about 5 minutes after a change to brisk; 24 MB).
#
#   bench/gpu/pack.sh
#
# The toolchain comes from PyPI wheels (../shared/tools/
# cuda-toolchain-from-pypi.sh, run once, which writes
# ~/.cache/brisk/cuda/env.sh); set BRISK_CUDA_ENV to use another env.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
env_sh=${BRISK_CUDA_ENV:-$HOME/.cache/brisk/cuda/env.sh}
if [ ! -f "$env_sh" ]; then
    echo "no CUDA toolchain at $env_sh: run 'cargo fetch', then ../shared/tools/cuda-toolchain-from-pypi.sh" >&2
    exit 2
fi
# shellcheck disable=SC1090
source "$env_sh"
target=${CARGO_TARGET_DIR:-target/cuda}
export CARGO_TARGET_DIR=$target
cargo build --release --features cuda -p brisk-cli -p brisk-bench --bin brisk --bin mlm-step
# The device tests' executable: cargo prints where it put it.
# (Compiler errors arrive as JSON too: they are printed as text.)
tests=$(cargo test --release --features cuda -p brisk --test device --no-run \
    --message-format=json |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message" and m["message"]["level"] == "error":
        print(m["message"]["rendered"], file=sys.stderr)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])') || true
if [ -z "$tests" ]; then
    echo "the device tests did not build with --features cuda (errors above)" >&2
    exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/bin"
cp "$target/release/brisk" "$target/release/mlm-step" "$stage/bin/"
cp "$tests" "$stage/bin/device-tests"
strip "$stage/bin/"*
tar -C "$stage" -cJf bench/gpu/bin.tar.xz bin
ls -l "$stage/bin" >&2
echo "wrote bench/gpu/bin.tar.xz ($(du -h bench/gpu/bin.tar.xz | cut -f1))" >&2
