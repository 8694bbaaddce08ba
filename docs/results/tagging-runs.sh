#!/usr/bin/env bash
# The tagging runs of docs/results/tagging.md, one after another, each
# resumable (`--resume` continues a run after its last finished epoch).
# MINILM: the MiniLM checkpoint (.ci/fetch-minilm prints its folder);
# MINI: a brisk `mini` pre-training run.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINILM=${MINILM:-$(.ci/fetch-minilm)}
MINI=${MINI:-runs/cmp-exit-mini-wiki/electra}
B=./target/release/brisk
EPOCHS=${EPOCHS:-20}
run() { # name, task, embeddings
  local out=runs/tag-$1
  if [ -f "$out/summary.json" ]; then return; fi
  local resume=""
  if [ -f "$out/model.json" ]; then resume="--resume"; fi
  $B tag train --task "$2" --embeddings "$3" --epochs "$EPOCHS" --threads 2 \
     --out "$out" $resume 2>&1 | tee "$out.log"
}
run conll03-minilm-chars conll03-ner "encoder:$MINILM,chars"
run conll03-mini-chars conll03-ner "encoder:$MINI,chars"
run conll03-word-chars conll03-ner "word,chars"
run ewt-upos-minilm-chars ewt-upos "encoder:$MINILM,chars"
