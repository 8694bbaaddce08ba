#!/usr/bin/env bash
# Same weights, same batch, same mask: one BERT masked-LM training step in
# brisk and in PyTorch (HF transformers), timed one after the other on the
# same number of threads, for each preset and thread count asked for.
#
#   bench/mlm_step.sh [--preset tiny,mini,small] [--threads 1,2] [--batch 16]
#                     [--steps 20] [--isa native,avx2] [--with-reference]
#                     [--profile] [--json FILE]
#
# `--isa avx2` runs both sides as a CPU without AVX-512 would, on any
# x86-64 that has AVX2: brisk built without its `avx512` feature (its
# kernels and gemm's) and capped with BRISK_ISA=avx2, PyTorch with
# ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and
# MKL_ENABLE_INSTRUCTIONS=AVX2 (its matrix products may go through MKL,
# which does not read the other two). `native` (the
# default) runs each at the best this CPU has.
#
# For each combination it first checks that the step-1 losses agree within
# 1e-4 (and reports the loss after one AdamW update), then times both sides
# and prints one table: tokens/s, the brisk/PyTorch ratio, peak RSS, the
# achieved matmul GFLOP/s of each, and the matmul-only floor (the step's
# matrix-product FLOPs at the rate this machine multiplies matrices).
# `--profile` prints, for each brisk run, the mean step's time per section
# (each part of a layer's forward and backward, the head, the embeddings,
# dropout masks, the optimiser) and what is outside them all; for each
# PyTorch run, the self time of its top ATen ops and of its matrix products
# (torch.profiler, over --steps more steps).
# `--with-reference` also times brisk's reference kernels
# (`model.kernels = "reference"`). The PyTorch venv is created on first use
# (bench/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
presets=mini batch=16 threads=$(nproc) steps=20 reference=0 json= isas=native profile=
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) presets=$2; shift 2 ;;
        --isa) isas=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --with-reference) reference=1; shift ;;
        --profile) profile=--profile; shift ;;
        --json) json=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh)
for isa in ${isas//,/ }; do
    case "$isa" in
        native) cargo build --release --quiet -p brisk-bench ;;
        avx2) cargo build --release --quiet -p brisk-bench --no-default-features \
                  --target-dir target/isa-avx2 ;;
        *) echo "--isa: $isa is not native or avx2" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/all.jsonl"

for isa in ${isas//,/ }; do
    case "$isa" in
        native) bin=target/release/mlm-step; env=() ;;
        avx2) bin=target/isa-avx2/release/mlm-step
              env=(BRISK_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
                   MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
    esac
    for preset in ${presets//,/ }; do
        for t in ${threads//,/ }; do
            dir="$work/$isa-$preset-$t"
            mkdir -p "$dir"
            echo "== $preset, $t threads, $isa" >&2
            env "${env[@]}" RAYON_NUM_THREADS=$t "$bin" --preset "$preset" --batch "$batch" \
                --threads "$t" --steps "$steps" --out "$dir" $profile > "$dir/brisk.json"
            env "${env[@]}" "$python" bench/mlm_step.py --dir "$dir" --brisk-json "$dir/brisk.json" \
                --threads "$t" --steps "$steps" $profile > "$dir/torch.json"
            if [ "$reference" = 1 ]; then
                env "${env[@]}" RAYON_NUM_THREADS=$t "$bin" --preset "$preset" --batch "$batch" \
                    --threads "$t" --steps "$steps" --out "$dir" --kernels reference > "$dir/reference.json"
            fi
            for side in brisk torch reference; do
                if [ -f "$dir/$side.json" ]; then
                    "$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["side"]=sys.argv[2]; r["isa"]=sys.argv[3]; print(json.dumps(r))' \
                        "$dir/$side.json" "$side" "$isa" >> "$work/all.jsonl"
                fi
            done
        done
    done
done
if [ -n "$json" ]; then cp "$work/all.jsonl" "$json"; fi

"$python" - "$work/all.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault((r["isa"], r["preset"], r["threads"]), {})[r["side"]] = r
first = next(iter(runs.values()))
print(f"batch {first['brisk']['batch']} x {first['brisk']['seq_len']}, torch {first['torch']['torch']}\n")
failed = []
for (isa, preset, threads), sides in runs.items():
    b, t = sides["brisk"], sides["torch"]
    diff = abs(b["loss_step1"] - t["loss_step1"])
    after = abs(b["loss_after_update"] - t["loss_after_update"])
    print(f"{preset}, {threads} threads, {isa} (brisk kernels {b['isa_kernels']}, torch "
          f"{t['cpu_capability']}): step-1 loss brisk {b['loss_step1']:.7f} pytorch "
          f"{t['loss_step1']:.7f} (|diff| {diff:.1e}); after one AdamW update |diff| {after:.1e}")
    if diff > 1e-4:
        failed.append(f"{preset}/{threads}/{isa}: step-1 losses differ by {diff:.2e}")
print()
print("| preset | threads | ISA | side | tokens/s | x PyTorch | peak RSS (MB) | step (ms) | matmul GFLOP/s | matmul floor (ms) | step / floor |")
print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for (isa, preset, threads), sides in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
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
        print(f"| {preset} | {threads} | {isa} | {r['framework']} | {r['tokens_per_s']:,.0f} | "
              f"{r['steps_per_s'] / t['steps_per_s']:.2f} | {r['peak_rss_mb']:,.0f} | {step_ms:,.0f} | "
              f"{flops / step_ms / 1e6:.0f} | {floor_ms:,.0f} | {step_ms / floor_ms:.2f} |")
print("\nmatmul GFLOP/s: the step's matrix-product FLOPs over its time; matmul floor: those FLOPs at "
      "the rate candle's gemm multiplies [tokens, hidden] x [hidden, ffn] here.")
if failed:
    sys.exit("; ".join(failed) + ": not timing different computations")
PY
