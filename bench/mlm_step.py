"""The PyTorch side of bench/mlm_step.sh: the same BERT masked-LM step as
brisk's `mlm-step`, on the same weights, batch and mask.

HF `BertForMaskedLM` is built from the preset's shape, loads brisk's initial
weights (brisk uses HF tensor names), and predicts only the masked rows, as
brisk does. The step-1 loss and the loss after one AdamW update (dropout off)
are printed for the runner to compare; then full training steps (dropout on)
are timed. Prints one JSON object.

On a GPU (`--device cuda`, from bench/gpu/check.sh) it runs the same step
in PyTorch eager, optionally under bf16 autocast (`--bf16`, the standard
mixed-precision recipe: f32 weights and optimiser state) and compiled
(`--compile`, torch.compile of the loss); `--checked-steps N` takes N
checked updates instead of one.
"""

import argparse
import sys
import json
import resource
import time

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, help="where mlm-step wrote init/batch")
    p.add_argument("--brisk-json", required=True, help="brisk's report (for the shape)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--profile", action="store_true",
                   help="also profile --steps more steps and print the ops' self time on stderr")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (f32 master weights)")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss")
    p.add_argument("--checked-steps", type=int, default=1)
    return p.parse_args()


# The presets' shapes (crates/brisk/src/config/presets.rs).
SHAPES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=12, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


# ATen's matrix products: what brisk's matmul floor counts.
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def print_profile(step, steps):
    """The mean step's self time per ATen op (wall time on the calling
    thread, intra-op threads included), largest first, as a Markdown table
    on stderr, with the matrix products' total."""
    from torch.profiler import ProfilerActivity, profile
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_ms = sum(e.self_cpu_time_total for e in ops) / 1e3 / steps
    matmul_ms = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS) / 1e3 / steps
    out = sys.stderr
    print("\n| PyTorch op | ms per step | % of ops | calls per step |", file=out)
    print("| --- | ---: | ---: | ---: |", file=out)
    for e in ops[:20]:
        ms = e.self_cpu_time_total / 1e3 / steps
        print(f"| {e.key} | {ms:.1f} | {100 * ms / total_ms:.1f} | {e.count / steps:.0f} |", file=out)
    print(f"| matrix products ({', '.join(sorted(MATMUL_OPS))}) | {matmul_ms:.1f} | "
          f"{100 * matmul_ms / total_ms:.1f} | |", file=out)
    print(f"| all ops | {total_ms:.1f} | 100.0 | |", file=out)
    print(f"| mean step under the profiler (wall) | {wall_ms:.1f} | | |\n", file=out)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    brisk = json.load(open(args.brisk_json))
    weights = load_file(f"{args.dir}/init.safetensors")
    vocab = weights["bert.embeddings.word_embeddings.weight"].shape[0]
    max_len = weights["bert.embeddings.position_embeddings.weight"].shape[0]
    config = BertConfig(
        vocab_size=vocab,
        max_position_embeddings=max_len,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        **SHAPES[brisk["preset"]],
    )
    model = BertForMaskedLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The decoder weight is tied to the word embeddings; position_ids is a buffer.
    missing = [k for k in missing if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
               and not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"weights do not match HF BERT: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    device = torch.device(args.device)
    model.to(device)

    batch = load_file(f"{args.dir}/batch.safetensors")
    ids, rows, targets = (batch[k].to(device) for k in ("input_ids", "rows", "targets"))
    hidden_size = config.hidden_size

    def plain_loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            hidden = model.bert(input_ids=ids).last_hidden_state.reshape(-1, hidden_size)
            logits = model.cls(hidden[rows])
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    loss_fn = torch.compile(plain_loss) if args.compile else plain_loss

    decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.999), eps=1e-6,
    )

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item(), norm.item()

    model.eval()
    checked = [step() for _ in range(max(args.checked_steps, 1))]
    loss_step1, norm_step1 = checked[0]
    with torch.no_grad():
        loss_after = loss_fn().item()

    model.train()
    # The median step, as brisk's side reports.
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    steps_per_s = 1.0 / times[len(times) // 2]
    if args.profile:
        print_profile(step, args.steps)
    b, l = ids.shape
    framework = "pytorch" + (" bf16 autocast" if args.bf16 else "") + (" compiled" if args.compile else "")
    on_gpu = device.type == "cuda"
    print(json.dumps({
        "framework": framework,
        "device": args.device,
        "checked_losses": [loss for loss, _ in checked],
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
        "preset": brisk["preset"],
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch": b,
        "seq_len": l,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_step1": loss_step1,
        "loss_after_update": loss_after,
        "grad_norm_step1": norm_step1,
        "steps_per_s": steps_per_s,
        "step_ms_min": times[0] * 1e3,
        "tokens_per_s": steps_per_s * b * l,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
