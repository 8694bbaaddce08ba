#!/usr/bin/env bash
# Checks that a pre-training run exported with `brisk export` loads in HF
# transformers (AutoModelForMaskedLM) and computes what brisk computes.
#
#   bench/hf_export.sh [RUN]
#
# Without RUN it first pre-trains the tiny preset for 30 steps. brisk embeds
# a few texts (mean vectors) and fills masks in the run; transformers does
# the same on the export. The script fails unless the vectors agree within
# 1e-4 and the top-5 tokens at each [MASK] are the same, with probabilities
# within 1e-3 (brisk prints three decimals).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-cli
brisk=target/release/brisk
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run=${1:-}
if [ -z "$run" ]; then
    run="$work/run"
    "$brisk" pretrain --steps 30 --out "$run" --quiet
fi
"$brisk" export "$run" --hf "$work/hf"
printf '%s\n' \
    "The town lies in the north of the country." \
    "She works for a company that makes boats." \
    "A short one." \
    "Two parts of a pair.	The second part." > "$work/texts.txt"
"$brisk" embed --model "$run" --input "$work/texts.txt" --out "$work/brisk.jsonl"
masked="The [MASK] is in the north of the [MASK]."
"$brisk" fill-mask --model "$run" --top-k 5 "$masked" > "$work/fill.txt"
"$python" bench/hf_export_check.py --hf "$work/hf" --vectors "$work/brisk.jsonl" \
    --fill "$work/fill.txt" --masked "$masked"
