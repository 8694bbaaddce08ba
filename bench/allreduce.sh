#!/usr/bin/env bash
# The gradient exchange of data-parallel training, brisk against PyTorch,
# between 2 processes on this machine (loopback/shared memory):
# brisk's `Exchange::all_reduce_mean` over MPI (Open MPI) on gradients
# shaped like a preset's masked-LM parameters, and torch.distributed's
# gloo all-reduce (DDP's CPU backend) on flat buffers of the same sizes in
# the same buckets. Prints the median seconds of the collective alone and
# of the whole exchange (brisk: pack, sum, divide, unpack; torch: sum,
# divide), their ratio, and what a ring all-reduce of that many bytes
# would take between 8 machines on 10 and 100 Gbit/s links.
#
#   bench/allreduce.sh [--presets mini,base] [--repeats 10]
#
# Needs Open MPI (.ci/install-mpi); the PyTorch venv is made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
presets=mini,base repeats=10
while [ $# -gt 0 ]; do
    case "$1" in
        --presets) presets=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
.ci/install-mpi
python=$(bench/venv.sh)
cargo build --release --quiet -p brisk-bench --features mpi --bin allreduce
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 target/release/allreduce --presets "$presets" --repeats "$repeats" > "$work/brisk.jsonl"
sizes=$("$python" -c 'import json,sys; print(",".join("%s=%d" % (r["preset"], r["elements"]) for r in map(json.loads, open(sys.argv[1]))))' "$work/brisk.jsonl")
"$python" bench/allreduce.py --sizes "$sizes" --repeats "$repeats" > "$work/torch.jsonl"

"$python" - "$work/brisk.jsonl" "$work/torch.jsonl" <<'PY'
import json, sys
brisk = {r["preset"]: r for r in map(json.loads, open(sys.argv[1]))}
torch = {r["preset"]: r for r in map(json.loads, open(sys.argv[2]))}
print("| preset | MB | brisk all-reduce ms | torch (gloo) ms | x torch | brisk exchange ms | torch exchange ms | x torch | brisk GB/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, b in brisk.items():
    t = torch[name]
    mb = b["bytes"] / 1e6
    print(f"| {name} | {mb:.0f} | {1e3*b['collective_seconds']:.1f} | {1e3*t['collective_seconds']:.1f} | "
          f"{t['collective_seconds']/b['collective_seconds']:.2f} | {1e3*b['seconds']:.1f} | "
          f"{1e3*t['seconds']:.1f} | {t['seconds']/b['seconds']:.2f} | {b['bytes']/b['seconds']/1e9:.2f} |")
print()
print("8 machines, ring all-reduce: each sends and receives 2*(8-1)/8 of the bytes over its link,")
print("plus brisk's packing (its exchange minus its all-reduce, measured above):")
print("| preset | 10 Gbit/s s | 100 Gbit/s s |")
print("| --- | ---: | ---: |")
for name, b in brisk.items():
    pack = b["seconds"] - b["collective_seconds"]
    wire = 2 * 7 / 8 * b["bytes"] * 8
    print(f"| {name} | {wire/10e9 + pack:.3f} | {wire/100e9 + pack:.3f} |")
PY
