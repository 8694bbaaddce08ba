"""The PyTorch side of bench/bilstm_step.sh: the same BiLSTM forward and
backward pass as brisk's `bilstm-step`, on the same weights, inputs and
lengths, with `nn.LSTM` over packed sequences (PyTorch's way of skipping
padding). Prints one JSON object.
"""

import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    w = load_file(f"{args.dir}/init.safetensors")
    b = load_file(f"{args.dir}/batch.safetensors")
    x, probe, lengths = b["x"], b["probe"], b["lengths"]
    w_ih, bias, w_hh = w["lstm.weight_ih"], w["lstm.bias"], w["lstm.weight_hh"]
    h4, d = w_ih.shape[0] // 2, w_ih.shape[1]
    lstm = torch.nn.LSTM(d, h4 // 4, batch_first=True, bidirectional=True)
    with torch.no_grad():
        # brisk: one bias per gate; PyTorch adds bias_ih and bias_hh.
        lstm.weight_ih_l0.copy_(w_ih[:h4])
        lstm.weight_ih_l0_reverse.copy_(w_ih[h4:])
        lstm.weight_hh_l0.copy_(w_hh[0])
        lstm.weight_hh_l0_reverse.copy_(w_hh[1])
        lstm.bias_ih_l0.copy_(bias[:h4])
        lstm.bias_ih_l0_reverse.copy_(bias[h4:])
        lstm.bias_hh_l0.zero_()
        lstm.bias_hh_l0_reverse.zero_()
    steps = x.shape[1]

    def one_pass():
        lstm.zero_grad()
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = lstm(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=steps)
        loss = (y * probe).sum()
        loss.backward()
        grads = [lstm.weight_ih_l0.grad, lstm.weight_ih_l0_reverse.grad, lstm.bias_ih_l0.grad,
                 lstm.bias_ih_l0_reverse.grad, lstm.weight_hh_l0.grad, lstm.weight_hh_l0_reverse.grad]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        return loss.item(), norm.item()

    loss, norm = one_pass()
    times = []
    for i in range(args.steps + 3):
        start = time.perf_counter()
        one_pass()
        if i >= 3:
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({
        "loss": loss,
        "grad_norm": norm,
        "ms": 1e3 * times[len(times) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
