#!/usr/bin/env bash
# The prepared device check: brisk's CUDA build on one GPU (an H100), in
# one call, within about 8 minutes, on a machine with nvcc, PyTorch and
# transformers but no Rust toolchain and no package registries.
#
#   bench/gpu/pack.sh                  # here, once: builds bench/gpu/bin.tar.xz
#   bench/gpu/check.sh [--no-compile]  # there: results under $OUT (or bench/gpu/out)
#
# (a) the CUDA tests (crates/brisk/tests/device.rs, `cuda::`): every
#     objective gives every parameter a finite non-zero gradient on the GPU
#     in f32 and bf16, masked LM equals the CPU, AdamW equals the host
#     update;
# (b) the first steps' losses on the GPU against the CPU path on the same
#     weights and batch (`mlm-step --cpu-check`, dropout off);
# (c) the same-weights step against PyTorch eager (HF BertForMaskedLM,
#     bf16 autocast) and torch.compile, for `base` (batch 128 × 128) and
#     `mini`: tokens/s and MFU against 989 TFLOP/s dense bf16;
# (d) two minutes of `base` masked-LM pre-training in bf16 on the built-in
#     corpus, with its loss curve (plots/loss.svg) and metrics.
#
# It finds libcudart/libcublas/libcurand where PyTorch's wheels keep them
# (site-packages/nvidia/*/lib). The binaries were built against CUDA 13.0
# (see ../shared/research/cuda-build.md); a CUDA 12 PyTorch has other
# sonames, and the check says which library is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
compile=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-compile) compile=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
out=${OUT:-bench/gpu/out}
mkdir -p "$out"
exec > >(tee "$out/check.log") 2>&1
start=$SECONDS
stamp() { echo "== [$((SECONDS - start)) s] $*"; }

bin=bench/gpu/bin
if [ ! -x "$bin/brisk" ]; then
    if [ ! -f bench/gpu/bin.tar.xz ]; then
        echo "no $bin and no bench/gpu/bin.tar.xz: run bench/gpu/pack.sh on the build machine" >&2
        exit 2
    fi
    tar -C bench/gpu -xJf bench/gpu/bin.tar.xz
fi
python=${PYTHON:-python3}
libs=$("$python" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "*", "lib"))}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if missing=$(ldd "$bin/brisk" | grep "not found"); then
    echo "the CUDA build needs libraries this machine does not have on LD_LIBRARY_PATH:" >&2
    echo "$missing" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
threads=$(nproc)

stamp "(a) CUDA tests"
"$bin/device-tests" cuda:: --test-threads 1 2>&1 | tail -20

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/all.jsonl"
side() { # preset side json
    "$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["side"]=sys.argv[2]; print(json.dumps(r))' \
        "$3" "$2" >> "$work/all.jsonl"
}
for preset in mini base; do
    dir="$work/$preset"
    mkdir -p "$dir"
    checked=3
    [ "$preset" = base ] && checked=2
    stamp "(b, c) $preset: brisk bf16 on the GPU (CPU check: $checked steps)"
    "$bin/mlm-step" --preset "$preset" --batch 128 --synthetic --device cuda --precision bf16 \
        --checked-steps "$checked" --cpu-check --steps 20 --threads "$threads" --out "$dir" \
        > "$dir/bf16.json"
    side "$preset" "brisk bf16" "$dir/bf16.json"
    stamp "$preset: brisk f32 on the GPU"
    "$bin/mlm-step" --preset "$preset" --batch 128 --synthetic --device cuda --precision f32 \
        --checked-steps "$checked" --steps 10 --threads "$threads" --out "$dir/f32" > "$dir/f32.json"
    side "$preset" "brisk f32" "$dir/f32.json"
    stamp "$preset: PyTorch eager, bf16 autocast"
    "$python" bench/mlm_step.py --dir "$dir" --brisk-json "$dir/bf16.json" --threads "$threads" \
        --device cuda --bf16 --checked-steps "$checked" --steps 20 > "$dir/eager.json"
    side "$preset" "pytorch eager" "$dir/eager.json"
    if [ "$compile" = 1 ]; then
        stamp "$preset: PyTorch torch.compile, bf16 autocast"
        "$python" bench/mlm_step.py --dir "$dir" --brisk-json "$dir/bf16.json" --threads "$threads" \
            --device cuda --bf16 --compile --checked-steps "$checked" --steps 20 > "$dir/compiled.json"
        side "$preset" "pytorch compiled" "$dir/compiled.json"
    fi
done
cp "$work/all.jsonl" "$out/steps.jsonl"
"$python" - "$work/all.jsonl" <<'PY' | tee "$out/steps.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
PEAK = 989e12
by = {}
for r in rows:
    by.setdefault(r["preset"], {})[r["side"]] = r
for preset, sides in by.items():
    b = sides["brisk bf16"]
    print(f"\n### {preset}: batch {b['batch']} x {b['seq_len']}, {b['parameters']:,} parameters")
    print("\nchecked steps (dropout off, same weights and batch): loss per step")
    print("\n| side | " + " | ".join(f"step {i + 1}" for i in range(len(b["checked_losses"]))) + " |")
    print("| --- |" + " ---: |" * len(b["checked_losses"]))
    print("| brisk, CPU (fused, f32) | " + " | ".join(f"{x:.5f}" for x in b["cpu_checked_losses"]) + " |")
    for name, r in sides.items():
        print(f"| {name}, GPU | " + " | ".join(f"{x:.5f}" for x in r["checked_losses"]) + " |")
    flops = b["matmul_flops"]
    eager = sides["pytorch eager"]["steps_per_s"]
    print("\n| side | tokens/s | x PyTorch eager | step (ms) | MFU (989 TFLOP/s) | GPU peak (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in sides.items():
        mfu = flops * r["steps_per_s"] / PEAK
        peak = r.get("gpu_peak_mb")
        peak = f"{peak:,.0f}" if peak else "n/a"
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['steps_per_s'] / eager:.2f} | "
              f"{1000 / r['steps_per_s']:.1f} | {100 * mfu:.1f}% | {peak} |")
print("\nMFU: the step's matrix-product FLOPs (forward x 3) per second over the dense bf16 peak.")
PY

stamp "(d) two minutes of base masked-LM pre-training, bf16, on the built-in corpus"
"$bin/brisk" pretrain --preset base --device cuda --set train.precision=bf16 --budget 2m \
    --threads "$threads" --out "$work/base-2min" -q --force
for f in metrics.jsonl summary.json plots/loss.svg config.toml; do
    if [ -f "$work/base-2min/$f" ]; then cp "$work/base-2min/$f" "$out/base-2min-$(basename "$f")"; fi
done
stamp "done; results in $out"
