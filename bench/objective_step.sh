#!/usr/bin/env bash
# Wall time per step against FLOPs per step of each pre-training objective
# (masked LM, ELECTRA, MC-BERT, and any variant), side by side in one run:
# does an objective cost in seconds what it costs in FLOPs?
#
#   bench/objective_step.sh --corpus corpora/wiki-mini [--preset mini]
#       [--steps 40] [--threads 2] [--brisk target/release/brisk]
#       [--variants "mlm electra mcbert"] [--set key=value ...]
#
# Each variant is pre-trained for --steps steps (no evaluation); the timing
# skips the first 10 steps (start-up, first allocations). It prints s/step,
# FLOPs/step (ELECTRA's counting, from metrics.jsonl), both as ratios to the
# first variant, and wall ratio / FLOP ratio (1.00: the step costs what its
# FLOPs say). --brisk times another build (e.g. an older commit's binary).
# A variant is an objective kind, optionally with extra settings after a
# colon: "electra:objective.exit_layers=[2,3]".
set -euo pipefail
cd "$(dirname "$0")/.."
preset=mini steps=40 threads=2 brisk=target/release/brisk corpus= variants="mlm electra mcbert"
sets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --corpus) corpus=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --brisk) brisk=$2; shift 2 ;;
        --variants) variants=$2; shift 2 ;;
        --set) sets+=(--set "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$corpus" ]; then
    echo "--corpus DIR is required (brisk corpus prepare --input ../shared/data/wiki --preset mini --out corpora/wiki-mini)" >&2
    exit 2
fi
if [ "$brisk" = target/release/brisk ]; then cargo build --release --quiet -p brisk-cli; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for variant in $variants; do
    kind=${variant%%:*}
    extra=()
    if [ "$variant" != "$kind" ]; then
        IFS=';' read -ra more <<< "${variant#*:}"
        for m in "${more[@]}"; do extra+=(--set "$m"); done
    fi
    masking=()
    case "$kind" in
        electra) masking=(--set objective.mask_token_prob=0.85 --set objective.random_token_prob=0) ;;
        mcbert) masking=(--set objective.mask_token_prob=0.85 --set objective.random_token_prob=0) ;;
    esac
    echo "== $variant" >&2
    "$brisk" pretrain --preset "$preset" --set "data.corpus=$corpus" --set "objective.kind=$kind" \
        "${masking[@]}" "${extra[@]}" "${sets[@]}" --set train.log_every=1 --set eval.every=0 \
        --steps "$steps" --threads "$threads" --out "$work/$kind-$RANDOM" -q > /dev/null
done

python3 - "$work" "$variants" <<'PY'
import json, pathlib, sys
work, variants = pathlib.Path(sys.argv[1]), sys.argv[2].split()
runs = sorted(work.iterdir(), key=lambda p: p.stat().st_mtime)
rows = []
for variant, run in zip(variants, runs):
    m = [json.loads(l) for l in open(run / "metrics.jsonl")]
    # The last row includes the final validation: stop one before it.
    first, last = m[9], m[-2]
    steps = last["step"] - first["step"]
    rows.append((variant, (last["wall_s"] - first["wall_s"]) / steps,
                 (last["flops"] - first["flops"]) / steps))
base = rows[0]
print(f"{'variant':40} {'s/step':>8} {'GFLOP/step':>11} {'wall x':>7} {'FLOPs x':>8} {'wall/FLOPs':>10}")
for name, s, f in rows:
    print(f"{name:40} {s:8.3f} {f / 1e9:11.1f} {s / base[1]:7.2f} {f / base[2]:8.2f} "
          f"{(s / base[1]) / (f / base[2]):10.2f}")
PY
