#!/usr/bin/env bash
# The loss-landscape experiments of docs/results/landscape.md, one per call:
#   docs/results/landscape-runs.sh MODEL_NAME TASK [extra compare-starts flags]
# MODEL_NAME: minilm (the MiniLM checkpoint .ci/fetch-minilm fetches) or a
# brisk pretrain run under runs/. Resumable: a second call continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1 task=$2
shift 2
case $name in
    minilm) model=$(.ci/fetch-minilm) ;;
    *) model=runs/$name ;;
esac
out=runs/landscape-$name-$task
resume=()
[[ -d $out ]] && resume=(--resume)
/usr/bin/time -v target/release/brisk landscape compare-starts --model "$model" --task "$task" \
    --out "$out" "${resume[@]}" --threads "${THREADS:-2}" "$@" 2>&1 | tee -a "$out.log"
