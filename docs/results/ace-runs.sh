#!/usr/bin/env bash
# The embedding searches of docs/results/ace.md, one after another, each
# resumable: a finished run (search.json) is skipped, an interrupted one
# continues after its last finished episode.
#
# MINILM: the MiniLM checkpoint (.ci/fetch-minilm prints its folder);
# ELECTRA, MLM: brisk `mini` pre-training runs (12 minutes each here):
#   brisk corpus prepare --input ../shared/data/wiki --preset mini --out corpora/wiki-mini
#   brisk pretrain --preset mini --set data.corpus=corpora/wiki-mini --set objective.kind=electra \
#       --set objective.mask_token_prob=0.85 --budget 12m --out runs/ace-electra-mini
#   brisk pretrain --preset mini --set data.corpus=corpora/wiki-mini --budget 12m --out runs/ace-mlm-mini
# Usage: [THREADS=n] docs/results/ace-runs.sh TASK STRATEGY SEED [EPISODES] [extra brisk ace flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
MINILM=${MINILM:-$(.ci/fetch-minilm)}
ELECTRA=${ELECTRA:-runs/ace-electra-mini}
MLM=${MLM:-runs/ace-mlm-mini}
B=${BRISK:-./target/release/brisk}
THREADS=${THREADS:-2}
task=$1 strategy=$2 seed=$3 episodes=${4:-30}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p runs
# The six candidates, named once and shared by every run.
cat > runs/ace-candidates.toml <<TOML
[[candidates]]
name = "word"
kind = "word"

[[candidates]]
name = "chars"
kind = "chars"

[[candidates]]
name = "minilm"
kind = "encoder"
model = "$MINILM"

[[candidates]]
name = "minilm-last4"
kind = "encoder"
model = "$MINILM"
layers = "last4"

[[candidates]]
name = "electra-mini"
kind = "encoder"
model = "$ELECTRA"

[[candidates]]
name = "mlm-mini"
kind = "encoder"
model = "$MLM"
TOML
out=runs/ace-$task-$strategy-s$seed
# Finished (not stopped by Ctrl-C): nothing to do.
if grep -qs '"stopped": false' "$out/search.json"; then exit 0; fi
if [ -f "$out/state/controller.json" ]; then
  $B ace --task "$task" --out "$out" --resume --threads "$THREADS" 2>&1 | tee -a "$out.log"
else
  rm -rf "$out"
  $B ace --task "$task" --candidates runs/ace-candidates.toml --strategy "$strategy" \
     --episodes "$episodes" --seed "$seed" --threads "$THREADS" --out "$out" "$@" 2>&1 | tee "$out.log"
fi
