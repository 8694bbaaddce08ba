#!/usr/bin/env bash
# Checks that pre-training runs exported with `brisk export` load in HF
# transformers (the class named in config.json: BertForMaskedLM,
# ElectraForPreTraining or BertModel) and compute what brisk computes.
#
#   bench/hf_export.sh [RUN...]
#
# Without RUNs it first pre-trains the tiny preset for 30 steps with each
# objective (mlm, electra, mcbert). For every run brisk embeds a few texts
# (mean vectors); transformers does the same on the export. A masked-LM run
# also fills masks, an ELECTRA run also scores each token of a text with a
# replaced word. The script fails unless the vectors agree within 1e-4, and
# the top-5 tokens at each [MASK] are the same and every probability agrees
# within 1e-3 (brisk prints three decimals).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-cli
brisk=target/release/brisk
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
    for kind in mlm electra mcbert; do
        # HF BERT and ELECTRA hold absolute positions only (tiny defaults to rotary).
        "$brisk" pretrain --steps 30 --set objective.kind=$kind --set model.position=absolute \
            --out "$work/$kind" --quiet
        runs+=("$work/$kind")
    done
fi
printf '%s\n' \
    "The town lies in the north of the country." \
    "She works for a company that makes boats." \
    "A short one." \
    "Two parts of a pair.	The second part." > "$work/texts.txt"
masked="The [MASK] is in the north of the [MASK]."
replaced="The town lies in the north of the boats."
for run in "${runs[@]}"; do
    echo "== $run"
    rm -rf "$work/hf" "$work/brisk.jsonl" "$work/fill.txt" "$work/detect.txt"
    "$brisk" export "$run" --hf "$work/hf"
    "$brisk" embed --model "$run" --input "$work/texts.txt" --out "$work/brisk.jsonl"
    check=(--hf "$work/hf" --vectors "$work/brisk.jsonl")
    case "$(grep -A1 '^\[objective\]' "$run/config.toml" | sed -n 's/^kind = "\(.*\)"/\1/p')" in
        electra)
            "$brisk" detect --model "$run" "$replaced" > "$work/detect.txt"
            check+=(--detect "$work/detect.txt" --replaced "$replaced") ;;
        mcbert) ;;
        *)
            "$brisk" fill-mask --model "$run" --top-k 5 "$masked" > "$work/fill.txt"
            check+=(--fill "$work/fill.txt" --masked "$masked") ;;
    esac
    "$python" bench/hf_export_check.py "${check[@]}"
done
