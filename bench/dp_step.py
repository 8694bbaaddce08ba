"""The PyTorch side of bench/dp_step.sh: masked-LM training steps of HF
BertForMaskedLM in the shape of a brisk preset, data-parallel as PyTorch
users run it (DistributedDataParallel over gloo, the CPU backend, which
overlaps its bucketed all-reduce with the backward pass), or in one
process. Each of `--ranks` processes takes `--batch / --ranks` sequences
of the global batch, 15% of their tokens masked. Rank 0 prints one JSON
object: the median step time and the global tokens per second."""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import BertConfig, BertForMaskedLM

# The presets' shapes (crates/brisk/src/config/presets.rs).
SHAPES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
}


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mini")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="per rank")
    p.add_argument("--batch", type=int, default=32, help="global, in sequences")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args()


class MaskedRows(torch.nn.Module):
    """BERT's masked-LM loss on the masked rows only, as brisk computes it
    (HF's BertForMaskedLM projects every token onto the vocabulary)."""

    def __init__(self, config):
        super().__init__()
        self.mlm = BertForMaskedLM(config)

    def forward(self, ids, rows, targets):
        hidden = self.mlm.bert(input_ids=ids).last_hidden_state.flatten(0, 1)
        logits = self.mlm.cls(hidden[rows])
        return torch.nn.functional.cross_entropy(logits, targets)


def worker(rank, args, port):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ranks > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=args.ranks)
    config = BertConfig(vocab_size=args.vocab, max_position_embeddings=args.seq_len,
                        hidden_act="gelu", **SHAPES[args.preset])
    model = MaskedRows(config)
    if args.ranks > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    local = args.batch // args.ranks
    gen = torch.Generator().manual_seed(rank)
    ids = torch.randint(5, args.vocab, (local, args.seq_len), generator=gen)
    rows = (torch.rand(ids.shape, generator=gen) < 0.15).flatten().nonzero().squeeze(1)
    targets = ids.flatten()[rows]
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, rows, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    step = times[len(times) // 2]
    if rank == 0:
        print(json.dumps({"side": "torch", "ranks": args.ranks, "threads": args.threads,
                          "step_s": step, "tokens_per_s": args.batch * args.seq_len / step,
                          "torch": torch.__version__}), flush=True)
    if args.ranks > 1:
        dist.destroy_process_group()


def main():
    args = parse_args()
    if args.ranks == 1:
        worker(0, args, 0)
    else:
        port = 29500 + os.getpid() % 1000
        mp.spawn(worker, args=(args, port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
