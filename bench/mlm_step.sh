#!/usr/bin/env bash
# Same weights, same batch, same mask: one BERT masked-LM training step in
# brisk and in PyTorch (HF transformers), timed one after the other on the
# same number of threads, for each preset and thread count asked for.
#
#   bench/mlm_step.sh [--preset tiny,mini,small] [--threads 1,2] [--batch 16]
#                     [--steps 20] [--with-reference] [--json FILE]
#
# For each combination it first checks that the step-1 losses agree within
# 1e-4 (and reports the loss after one AdamW update), then times both sides
# and prints one table: tokens/s, the brisk/PyTorch ratio, peak RSS, the
# achieved matmul GFLOP/s of each, and the matmul-only floor (the step's
# matrix-product FLOPs at the rate this machine multiplies matrices).
# `--with-reference` also times brisk's reference kernels
# (`model.kernels = "reference"`). The PyTorch venv is created on first use
# (bench/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
presets=mini batch=16 threads=$(nproc) steps=20 reference=0 json=
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) presets=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --with-reference) reference=1; shift ;;
        --json) json=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/all.jsonl"

for preset in ${presets//,/ }; do
    for t in ${threads//,/ }; do
        dir="$work/$preset-$t"
        mkdir -p "$dir"
        echo "== $preset, $t threads" >&2
        RAYON_NUM_THREADS=$t target/release/mlm-step --preset "$preset" --batch "$batch" \
            --threads "$t" --steps "$steps" --out "$dir" > "$dir/brisk.json"
        "$python" bench/mlm_step.py --dir "$dir" --brisk-json "$dir/brisk.json" \
            --threads "$t" --steps "$steps" > "$dir/torch.json"
        if [ "$reference" = 1 ]; then
            RAYON_NUM_THREADS=$t target/release/mlm-step --preset "$preset" --batch "$batch" \
                --threads "$t" --steps "$steps" --out "$dir" --kernels reference > "$dir/reference.json"
        fi
        for side in brisk torch reference; do
            if [ -f "$dir/$side.json" ]; then
                "$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["side"]=sys.argv[2]; print(json.dumps(r))' \
                    "$dir/$side.json" "$side" >> "$work/all.jsonl"
            fi
        done
    done
done
if [ -n "$json" ]; then cp "$work/all.jsonl" "$json"; fi

"$python" - "$work/all.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault((r["preset"], r["threads"]), {})[r["side"]] = r
first = next(iter(runs.values()))
print(f"batch {first['brisk']['batch']} x {first['brisk']['seq_len']}, torch {first['torch']['torch']}\n")
failed = []
for (preset, threads), sides in runs.items():
    b, t = sides["brisk"], sides["torch"]
    diff = abs(b["loss_step1"] - t["loss_step1"])
    after = abs(b["loss_after_update"] - t["loss_after_update"])
    print(f"{preset}, {threads} threads: step-1 loss brisk {b['loss_step1']:.7f} pytorch "
          f"{t['loss_step1']:.7f} (|diff| {diff:.1e}); after one AdamW update |diff| {after:.1e}")
    if diff > 1e-4:
        failed.append(f"{preset}/{threads}: step-1 losses differ by {diff:.2e}")
print()
print("| preset | threads | side | tokens/s | x PyTorch | peak RSS (MB) | step (ms) | matmul GFLOP/s | matmul floor (ms) |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for (preset, threads), sides in runs.items():
    t = sides["torch"]
    # The floor: the step's matrix-product FLOPs at the rate brisk's gemm
    # multiplies the step's largest shape on this machine.
    flops, rate = sides["brisk"]["matmul_flops"], sides["brisk"]["matmul_gflops_rate"]
    floor_ms = flops / rate / 1e6
    for side in ("brisk", "reference", "torch"):
        if side not in sides:
            continue
        r = sides[side]
        step_ms = 1000 / r["steps_per_s"]
        print(f"| {preset} | {threads} | {r['framework']} | {r['tokens_per_s']:,.0f} | "
              f"{r['steps_per_s'] / t['steps_per_s']:.2f} | {r['peak_rss_mb']:,.0f} | {step_ms:,.0f} | "
              f"{flops / step_ms / 1e6:.0f} | {floor_ms:,.0f} |")
print("\nmatmul GFLOP/s: the step's matrix-product FLOPs over its time; matmul floor: those FLOPs at "
      "the rate candle's gemm multiplies [tokens, hidden] x [hidden, ffn] here.")
if failed:
    sys.exit("; ".join(failed) + ": not timing different computations")
PY
