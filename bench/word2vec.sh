#!/usr/bin/env bash
# Word2Sense (brisk senses) against word2vec (gensim skip-gram) on the same
# text, window, subsampling and vocabulary: Spearman ρ on every word
# similarity set, side by side, and the training times.
#
#   bench/word2vec.sh [--run DIR] [--threads 2] [--sets DIR]
#
# --run: a finished `brisk senses train` run (default runs/senses-wiki,
# trained here when missing: `brisk senses train --out runs/senses-wiki
# --iterations 400`, the shared Wikipedia text, K = 3000). gensim gets the
# run's text, its window and subsampling, and exactly its vocabulary;
# vectors of 300 dimensions, 5 epochs, 5 negative samples. The venv is
# made on first use (bench/venv.sh gensim).
set -euo pipefail
cd "$(dirname "$0")/.."
run=runs/senses-wiki threads=$(nproc) sets=../shared/data/word-sim
while [ $# -gt 0 ]; do
    case "$1" in
        --run) run=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --sets) sets=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python=$(bench/venv.sh gensim)
cargo build --release --quiet -p brisk-cli
b=target/release/brisk
if [ ! -f "$run/model/clusters.json" ]; then
    $b senses train --out "$run" --iterations 400 --threads "$threads"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$b senses eval --model "$run" --word-sim "$sets" --quiz 0 --out "$work/eval" --threads "$threads" > /dev/null
text=$("$python" -c 'import sys, tomllib; c = tomllib.load(open(sys.argv[1], "rb")); print(c["data"]["input"][0])' "$run/config.toml")
read -r window sample < <("$python" -c 'import sys, tomllib; c = tomllib.load(open(sys.argv[1], "rb"))["cooc"]; print(c["window"], c["subsample"])' "$run/config.toml")
"$python" bench/word2vec.py --text "$text" --vocab "$run/vocab.tsv" --sets "$sets" \
    --threads "$threads" --window "$window" --sample "$sample" > "$work/gensim.json"
"$python" - "$run" "$work/eval/word_similarity.json" "$work/gensim.json" <<'PY'
import json, sys
run = sys.argv[1]
summary = json.load(open(f"{run}/summary.json"))
ours = {r["set"]: r for r in json.load(open(sys.argv[2]))}
ref = json.load(open(sys.argv[3]))
print(f"Word similarity, Spearman ρ x 100 over the pairs found; Word2Sense: {run} "
      f"(K = {summary['topics']}, {summary['iterations']} iterations, "
      f"{summary['vectors']['clusters']} merged senses, {summary['vectors']['mean_nnz']:.0f} non-zeros per word); "
      f"word2vec: gensim skip-gram, {ref['dim']} dimensions, {ref['epochs']} epochs, "
      f"{ref['threads']} threads, same vocabulary ({ref['vocab']:,} words)\n")
print("| set | pairs | found (Word2Sense) | found (word2vec) | Word2Sense | word2vec |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
f = lambda x: "-" if x is None else f"{100 * x:.1f}"
for r in ref["sets"]:
    o = ours.get(r["set"], {})
    print(f"| {r['set']} | {r['pairs']} | {o.get('found', '-')} | {r['found']} | {f(o.get('spearman'))} | {f(r['spearman'])} |")
sample_s = summary["sample_s"]
print(f"\nTraining: Word2Sense {summary['count_s']:.0f} s counting + {sample_s:.0f} s sampling "
      f"({summary['seconds_per_iteration']:.2f} s per iteration, {summary['tokens_per_s'] / 1e6:.1f} M tokens/s) "
      f"+ {summary['vectors']['seconds']:.0f} s vectors (merging {summary['vectors']['merge_s']:.0f} s); "
      f"word2vec {ref['train_s']:.0f} s (+ {ref['read_s']:.0f} s reading in Python). "
      f"Ratio of training times, Word2Sense / word2vec: "
      f"{(summary['count_s'] + sample_s + summary['vectors']['seconds']) / ref['train_s']:.2f}")
PY
