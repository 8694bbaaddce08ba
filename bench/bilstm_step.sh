#!/usr/bin/env bash
# Same weights, inputs and lengths: one forward and backward pass of a
# BiLSTM layer in brisk (the fused recurrence, and candle's per-step
# composition) and in PyTorch (nn.LSTM over packed sequences), timed one
# after the other on the same number of threads.
#
#   bench/bilstm_step.sh [--threads 2] [--batch 32] [--input 434] [--hidden 256]
#
# It first checks that the losses and weight-gradient norms agree (1e-3
# relative), then prints one table: milliseconds per pass and words/s of
# each, and the ratios. The PyTorch venv is created on first use
# (bench/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc) batch=32 input=434 hidden=256
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --input) input=$2; shift 2 ;;
        --hidden) hidden=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-bench --bin bilstm-step
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
RAYON_NUM_THREADS=$threads target/release/bilstm-step --threads "$threads" --batch "$batch" \
    --input "$input" --hidden "$hidden" --out "$work" > "$work/brisk.json"
"$python" bench/bilstm_step.py --dir "$work" --threads "$threads" > "$work/torch.json"
"$python" - "$work/brisk.json" "$work/torch.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
t = json.load(open(sys.argv[2]))
for key, other in [("loss", "loss"), ("grad_norm", "grad_norm")]:
    for side, value in [("PyTorch", t[other]), ("candle per-step", b["reference_" + key])]:
        rel = abs(b[key] - value) / max(abs(value), 1e-12)
        if rel > 1e-3:
            sys.exit(f"{key}: brisk {b[key]} but {side} {value}")
print(f"BiLSTM layer, batch {b['batch']} ({b['words']} words, longest {b['steps']}), "
      f"input {b['input']}, hidden {b['hidden']} per direction, {b['threads']} threads; "
      f"forward + backward, median ms (loss {b['loss']:.4f} and gradient norm agree)\n")
print("| implementation | ms per pass | words/s | x PyTorch |")
print("| --- | ---: | ---: | ---: |")
rows = [("brisk, fused recurrence", b["fused_ms"]), ("brisk, candle per-step ops", b["reference_ms"]),
        ("PyTorch nn.LSTM, packed", t["ms"])]
for name, ms in rows:
    print(f"| {name} | {ms:.1f} | {b['words'] / ms * 1e3:,.0f} | {t['ms'] / ms:.2f} |")
PY
