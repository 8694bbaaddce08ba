#!/usr/bin/env bash
# The tagging and parsing runs of docs/results/tagging.md, one after
# another, each resumable (`--resume` continues a run after its last
# finished epoch). MINILM: the MiniLM checkpoint (.ci/fetch-minilm prints
# its folder); MINI: a brisk `mini` pre-training run.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINILM=${MINILM:-$(.ci/fetch-minilm)}
MINI=${MINI:-runs/cmp-exit-mini-wiki/electra}
B=./target/release/brisk
EPOCHS=${EPOCHS:-20}
run() { # command, name, task, embeddings, epochs
  local out=runs/$1-$2
  if [ -f "$out/summary.json" ]; then return; fi
  local resume=""
  if [ -f "$out/model.json" ]; then resume="--resume"; fi
  $B "$1" train --task "$3" --embeddings "$4" --epochs "$5" --threads 2 \
     --out "$out" $resume 2>&1 | tee "$out.log"
}
run tag conll03-minilm-chars conll03-ner "encoder:$MINILM,chars" "$EPOCHS"
run tag conll03-mini-chars conll03-ner "encoder:$MINI,chars" "$EPOCHS"
run tag conll03-word-chars conll03-ner "word,chars" "$EPOCHS"
run tag ewt-upos-minilm-chars ewt-upos "encoder:$MINILM,chars" "$EPOCHS"
run parse ewt-deps-minilm-chars ewt-deps "encoder:$MINILM,chars" 15
