"""The transformers side of bench/hf_export.sh: loads a `brisk export`
directory with the class its config.json names and compares its mean-pooled
last hidden states, and its [MASK] predictions (masked-LM) or replaced-token
probabilities (ELECTRA), with what brisk printed for the run."""

import argparse
import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer


def parse_fill(path):
    """brisk fill-mask's output: per [MASK], a list of (token, probability)."""
    masks = []
    for line in open(path, encoding="utf-8"):
        if line.startswith("[MASK]"):
            masks.append([])
        elif line.startswith("  ") and masks:
            p, token = line.split(None, 1)
            masks[-1].append((token.strip(), float(p)))
    return masks


def parse_detect(path):
    """brisk detect's output: (token, probability of replaced) per token."""
    rows = []
    for line in open(path, encoding="utf-8"):
        if line.startswith("  "):
            p, token = line.split(None, 1)
            rows.append((token.strip(), float(p)))
    return rows


def check_fill(model, tokenizer, masked, fill, failures):
    enc = tokenizer(masked, return_tensors="pt")
    probs = model(**enc).logits[0].softmax(dim=-1)
    positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    brisk_fill = parse_fill(fill)
    for i, (pos, theirs) in enumerate(zip(positions, brisk_fill)):
        top = probs[pos].topk(len(theirs))
        ours = [(tokenizer.convert_ids_to_tokens(int(t)), float(p))
                for p, t in zip(top.values, top.indices)]
        print(f"[MASK] {i + 1}: transformers {[(t, round(p, 3)) for t, p in ours]}")
        print(f"           brisk        {theirs}")
        if [t for t, _ in ours] != [t for t, _ in theirs] or any(
                abs(a - b) > 1e-3 for (_, a), (_, b) in zip(ours, theirs)):
            failures.append(f"[MASK] {i + 1}: predictions differ")
    if len(positions) != len(brisk_fill):
        failures.append(f"{len(positions)} masks in transformers, {len(brisk_fill)} in brisk")


def check_detect(model, tokenizer, text, detect, failures):
    enc = tokenizer(text, return_tensors="pt")
    probs = model(**enc).logits[0].sigmoid().tolist()
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    theirs = parse_detect(detect)
    print("p(replaced): transformers", [(t, round(p, 3)) for t, p in zip(tokens, probs)])
    print("             brisk       ", theirs)
    if [t for t, _ in theirs] != tokens:
        failures.append("the tokens differ")
    worst = max(abs(a - b) for a, (_, b) in zip(probs, theirs))
    if worst > 1e-3:
        failures.append(f"replaced-token probabilities differ by {worst:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--fill")
    ap.add_argument("--masked")
    ap.add_argument("--detect")
    ap.add_argument("--replaced")
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.hf)
    class_name = AutoConfig.from_pretrained(args.hf).architectures[0]
    model = getattr(transformers, class_name).from_pretrained(args.hf).eval()
    print(f"loaded {class_name}")
    failures = []

    worst = 0.0
    with torch.no_grad():
        for line in open(args.vectors, encoding="utf-8"):
            row = json.loads(line)
            text = row["text"]
            enc = tokenizer(*text, return_tensors="pt") if isinstance(text, list) \
                else tokenizer(text, return_tensors="pt")
            hidden = model.base_model(**enc).last_hidden_state[0]
            diff = (hidden.mean(dim=0) - torch.tensor(row["vector"])).abs().max().item()
            worst = max(worst, diff)
            if int(enc["input_ids"].shape[1]) != row["tokens"]:
                failures.append(f"{text!r}: {enc['input_ids'].shape[1]} tokens, brisk {row['tokens']}")
        print(f"mean vectors: largest |brisk - transformers| {worst:.2e}")
        if worst > 1e-4:
            failures.append(f"vectors differ by {worst:.2e}")

        if args.fill:
            check_fill(model, tokenizer, args.masked, args.fill, failures)
        if args.detect:
            check_detect(model, tokenizer, args.replaced, args.detect, failures)
    if failures:
        sys.exit("; ".join(failures))
    print("the export loads in transformers and matches brisk")


if __name__ == "__main__":
    main()
