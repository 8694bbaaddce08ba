#!/usr/bin/env bash
# Data-parallel pre-training on one machine: the same global batch trained
# by 1 process with T threads and by T MPI ranks with 1 thread each, in
# brisk (`brisk pretrain`, built with the `mpi` feature, on the built-in
# corpus) and in PyTorch (HF BERT in the preset's shape, DDP over gloo;
# bench/dp_step.py). Prints the median step time, tokens/s and, for brisk's
# ranks, the share of the step spent in the gradient exchange (its
# `allreduce_s` metric), and brisk's speed over PyTorch's in each layout.
#
#   bench/dp_step.sh [--preset mini] [--ranks 2] [--steps 20]
#
# Needs Open MPI (.ci/install-mpi); the PyTorch venv is made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=mini ranks=2 steps=20
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --ranks) ranks=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
.ci/install-mpi
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-cli --features mpi
brisk=target/release/brisk
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== preparing the built-in corpus" >&2
"$brisk" pretrain --preset "$preset" --steps 1 --out "$work/prep" -q > /dev/null
common=(pretrain --preset "$preset" --set "data.corpus=$work/prep/corpus" --steps $((steps + 4))
        --set eval.every=0 --set train.save_every=0 --set train.log_every=1 -q)
echo "== brisk, 1 process x $ranks threads" >&2
"$brisk" "${common[@]}" --threads "$ranks" --out "$work/one" > /dev/null
echo "== brisk, $ranks ranks x 1 thread" >&2
mpirun -np "$ranks" --bind-to core "$brisk" "${common[@]}" --threads 1 --out "$work/many" > /dev/null
batch=$(sed -n 's/^batch_size = //p' "$work/one/config.toml")
vocab=$(sed -n 's/^vocab_size = //p' "$work/one/config.toml")
echo "== PyTorch, 1 process x $ranks threads" >&2
"$python" bench/dp_step.py --preset "$preset" --ranks 1 --threads "$ranks" --batch "$batch" \
    --vocab "$vocab" --steps "$steps" > "$work/torch-one.json"
echo "== PyTorch, $ranks ranks x 1 thread" >&2
"$python" bench/dp_step.py --preset "$preset" --ranks "$ranks" --threads 1 --batch "$batch" \
    --vocab "$vocab" --steps "$steps" > "$work/torch-many.json"

"$python" - "$work" "$ranks" "$preset" "$batch" <<'PY'
import json, statistics, sys
work, ranks, preset, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def brisk(run):
    rows = [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl")]
    # Step times from the wall clock; the first 3 steps warm up, the last
    # one also validates.
    steps = [b["wall_s"] - a["wall_s"] for a, b in zip(rows, rows[1:])][3:-1]
    step = statistics.median(steps)
    tokens = rows[1]["tokens"] - rows[0]["tokens"]
    share = [r["allreduce_s"] for r in rows[4:-1] if "allreduce_s" in r]
    return step, tokens / step, (statistics.median(share) / step if share else None)

def torch(name):
    r = json.load(open(f"{work}/torch-{name}.json"))
    return r["step_s"], r["tokens_per_s"]

print(f"{preset}, global batch {batch} sequences, median step")
print("| layout | brisk step ms | brisk tok/s | all-reduce share | PyTorch step ms | PyTorch tok/s | x PyTorch |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, label in (("one", f"1 process x {ranks} threads"), ("many", f"{ranks} ranks x 1 thread")):
    step, tps, share = brisk(name)
    tstep, ttps = torch(name)
    share = "-" if share is None else f"{100*share:.1f}%"
    print(f"| {label} | {1e3*step:.0f} | {tps:,.0f} | {share} | {1e3*tstep:.0f} | {ttps:,.0f} | {tps/ttps:.2f} |")
PY
