#!/usr/bin/env bash
# Same weights, same batch, same mask: one BERT masked-LM training step in
# brisk and in PyTorch (HF transformers), timed one after the other on the
# same number of threads.
#
#   bench/mlm_step.sh [--preset mini] [--batch 16] [--threads N] [--steps 20]
#
# It first checks that the step-1 losses agree within 1e-4 (and reports the
# loss after one AdamW update), then prints steps/s, tokens/s, peak RSS and
# the brisk/PyTorch ratio. The PyTorch venv is created on first use
# (bench/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=mini batch=16 threads=$(nproc) steps=20
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

RAYON_NUM_THREADS=$threads target/release/mlm-step --preset "$preset" --batch "$batch" --threads "$threads" \
    --steps "$steps" --out "$work" > "$work/brisk.json"
"$python" bench/mlm_step.py --dir "$work" --brisk-json "$work/brisk.json" \
    --threads "$threads" --steps "$steps" > "$work/torch.json"

"$python" - "$work/brisk.json" "$work/torch.json" <<'PY'
import json, sys
b, t = (json.load(open(p)) for p in sys.argv[1:3])
diff = abs(b["loss_step1"] - t["loss_step1"])
after = abs(b["loss_after_update"] - t["loss_after_update"])
print(f"{b['preset']}, batch {b['batch']} x {b['seq_len']}, {b['threads']} threads, "
      f"{b['parameters']:,} parameters, torch {t['torch']}")
print(f"step-1 loss: brisk {b['loss_step1']!r}  pytorch {t['loss_step1']!r}  |diff| {diff:.2e}")
print(f"loss after one AdamW update: brisk {b['loss_after_update']!r}  "
      f"pytorch {t['loss_after_update']!r}  |diff| {after:.2e}")
if diff > 1e-4:
    sys.exit(f"step-1 losses differ by {diff:.2e} (> 1e-4): not timing different computations")
print()
print(f"| {'':8} | {'steps/s':>8} | {'tokens/s':>9} | {'peak RSS (MB)':>13} |")
print(f"| {'-'*8} | {'-'*7}: | {'-'*8}: | {'-'*12}: |")
for r in (b, t):
    print(f"| {r['framework']:8} | {r['steps_per_s']:8.2f} | {r['tokens_per_s']:9.0f} | {r['peak_rss_mb']:13.0f} |")
print(f"\nbrisk / PyTorch speed: {b['steps_per_s'] / t['steps_per_s']:.2f}x")
PY
