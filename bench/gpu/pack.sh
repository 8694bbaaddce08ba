#!/usr/bin/env bash
# Builds what bench/gpu/check.sh runs on a GPU machine that has no Rust
# toolchain, on this machine, which needs no GPU and no CUDA toolkit:
# the CUDA build (`--features cuda`) of `brisk`, of the `mlm-step`
# benchmark and of the device tests, stripped and packed into
# bench/gpu/bin.tar.xz (git-ignored; about 16 minutes on 2 cores the first
# time, mostly candle's CUDA kernels).
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
    echo "no CUDA toolchain at $env_sh: run ../shared/tools/cuda-toolchain-from-pypi.sh first" >&2
    exit 2
fi
# shellcheck disable=SC1090
source "$env_sh"
target=${CARGO_TARGET_DIR:-target/cuda}
export CARGO_TARGET_DIR=$target
cargo build --release --features cuda -p brisk-cli -p brisk-bench --bin brisk --bin mlm-step
# The device tests' executable: cargo prints where it put it.
tests=$(cargo test --release --features cuda -p brisk --test device --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])')
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/bin"
cp "$target/release/brisk" "$target/release/mlm-step" "$stage/bin/"
cp "$tests" "$stage/bin/device-tests"
strip "$stage/bin/"*
tar -C "$stage" -cJf bench/gpu/bin.tar.xz bin
ls -l "$stage/bin" >&2
echo "wrote bench/gpu/bin.tar.xz ($(du -h bench/gpu/bin.tar.xz | cut -f1))" >&2
