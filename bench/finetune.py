"""The PyTorch side of bench/finetune.sh: HF transformers'
BertForSequenceClassification fine-tuned with brisk's recipe (AdamW with
weight decay 0.01 except on biases and LayerNorm, eps 1e-6, 10% linear
warm-up then linear decay, clipping at 1, batches padded to their longest
input), on the first N training examples of a GLUE TSV task, scored on dev
after each epoch. Prints one JSON object: the best dev accuracy and the
time per epoch."""

import argparse
import json
import random
import time

import torch
from transformers import AutoTokenizer, BertForSequenceClassification


def read_tsv(path, text_col, label_col, labels, limit=None):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        a, l = header.index(text_col), header.index(label_col)
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) > max(a, l):
                rows.append((cols[a], labels.index(cols[l].strip())))
    return rows[:limit] if limit else rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--max-train", type=int, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    labels = ["0", "1"]
    train = read_tsv(args.train, "sentence", "label", labels, args.max_train)
    dev = read_tsv(args.dev, "sentence", "label", labels)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)
    decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith(".bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, eps=1e-6)
    steps_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = round(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))

    def batch(rows):
        enc = tok([t for t, _ in rows], padding=True, truncation=True, max_length=args.max_len,
                  return_tensors="pt")
        return enc, torch.tensor([l for _, l in rows])

    best, epoch_times = 0.0, []
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(train)))
        random.shuffle(order)
        start = time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            enc, y = batch([train[j] for j in order[i:i + args.batch_size]])
            loss = model(**enc, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        epoch_times.append(time.perf_counter() - start)
        model.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(dev), args.batch_size):
                enc, y = batch(dev[i:i + args.batch_size])
                right += (model(**enc).logits.argmax(-1) == y).sum().item()
        best = max(best, right / len(dev))
    print(json.dumps({"framework": "pytorch", "dev_accuracy": best,
                      "train_epoch_s": sorted(epoch_times)[len(epoch_times) // 2]}))


if __name__ == "__main__":
    main()
