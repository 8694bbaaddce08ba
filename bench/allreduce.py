"""The PyTorch side of bench/allreduce.sh: torch.distributed's all-reduce
(gloo, the CPU backend DDP uses) of flat f32 buffers of the sizes brisk
exchanged, in buckets of the same size, between processes on this machine.
Rank 0 prints one JSON object per size: the median seconds of a sum (the
collective alone) and of DDP's averaging step as torch users write it
(sum, then divide in place)."""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", required=True, help="preset=elements,... from brisk's run")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--bucket", type=int, default=4 << 20, help="elements per call")
    p.add_argument("--repeats", type=int, default=10)
    return p.parse_args()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def worker(rank, args, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=args.ranks)
    for item in args.sizes.split(","):
        name, elements = item.split("=")
        elements = int(elements)
        flat = torch.full((elements,), float(rank + 1))
        buckets = list(torch.split(flat, args.bucket))
        sums, means = [], []
        for i in range(args.repeats + 2):
            dist.barrier()
            start = time.perf_counter()
            for b in buckets:
                dist.all_reduce(b)
            took = time.perf_counter() - start
            dist.barrier()
            start = time.perf_counter()
            for b in buckets:
                dist.all_reduce(b)
                b.div_(args.ranks)
            took_mean = time.perf_counter() - start
            if i >= 2:
                sums.append(took)
                means.append(took_mean)
        if rank == 0:
            print(json.dumps({"side": "torch", "preset": name, "ranks": args.ranks,
                              "elements": elements, "bytes": 4 * elements,
                              "collective_seconds": median(sums),
                              "seconds": median(means),
                              "torch": torch.__version__}), flush=True)
    dist.destroy_process_group()


def main():
    args = parse_args()
    port = 29500 + os.getpid() % 1000
    mp.spawn(worker, args=(args, port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
