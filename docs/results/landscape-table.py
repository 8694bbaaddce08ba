#!/usr/bin/env python3
"""The tables of docs/results/landscape.md from compare-starts and layers
outputs: python3 docs/results/landscape-table.py runs/landscape-*/ (run
directories of `brisk landscape compare-starts`; a `START-layers` view
inside one, if there, adds the layer table)."""
import csv
import datetime
import json
import math
import os
import sys


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    sa = math.sqrt(sum((x - ma) ** 2 for x in a))
    sb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb)


def surface_facts(path):
    """Train/dev agreement on a trajectory grid: correlation of the two
    losses over the grid, and how far apart their grid minima lie."""
    rows = list(csv.DictReader(open(path)))
    train = [float(r["train_loss"]) for r in rows]
    dev = [float(r["dev_loss"]) for r in rows]
    at = lambda xs: rows[xs.index(min(xs))]
    t, d = at(train), at(dev)
    gap = math.dist((float(t["x"]), float(t["y"])), (float(d["x"]), float(d["y"])))
    span = max(float(r["x"]) for r in rows) - min(float(r["x"]) for r in rows)
    return pearson(train, dev), gap / span


def layer_costs(path):
    """Per group: train loss with that group back at its start (α = 0)
    minus the fine-tuned loss (α = 1)."""
    g = json.load(open(path))
    x, names = g["x"], g["y_names"]
    m = g["measures"].index("train_loss")
    i0, i1 = x.index(0.0), x.index(1.0)
    row = lambda j, i: g["values"][j * len(x) + i][m]
    return [(n, row(j, i0) - row(j, i1)) for j, n in enumerate(names)]


def wall_s(folder, last):
    """A step's wall time: from its provenance's start to its last file."""
    start = json.load(open(os.path.join(folder, "provenance.json")))["start_time"]
    t0 = datetime.datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    return os.path.getmtime(os.path.join(folder, last)) - t0


def main(dirs):
    print("| run | start | dev | train loss start → end | distance | top eigenvalue | ε-sharpness | train/dev r | minima apart |")
    print("|---|---|---|---|---|---|---|---|---|")
    layers = []
    for d in dirs:
        s = json.load(open(os.path.join(d, "summary.json")))
        for st in s["starts"]:
            r, apart = surface_facts(os.path.join(d, st["start"] + "-trajectory", "trajectory.csv"))
            print(f"| {os.path.basename(d.rstrip('/'))} | {st['caption']} | {st['metric']} {st['dev']:.3f} (epoch {st['best_epoch']}) "
                  f"| {st['train_loss_start']:.3f} → {st['train_loss_end']:.3f} | {st['distance']:.2f} "
                  f"| {st['top_eigenvalue']:.1f} | {st['epsilon_sharpness']:.1f} | {r:.3f} | {apart:.2f} |")
            lp = os.path.join(d, st["start"] + "-layers", "layers.json")
            if os.path.exists(lp) and None not in json.load(open(lp))["values"]:
                layers.append((os.path.basename(d.rstrip("/")) + " " + st["start"], layer_costs(lp)))
    print()
    print("| run | start | fine-tune | line | trajectory | sharpness | layers |")
    print("|---|---|---|---|---|---|---|")
    for d in dirs:
        for st in json.load(open(os.path.join(d, "summary.json")))["starts"]:
            name = st["start"]
            ft = os.path.join(d, name)
            # Fine-tuning: from its step-0 checkpoint to its result.
            cells = [os.path.getmtime(os.path.join(ft, "result.json"))
                     - os.path.getmtime(os.path.join(ft, "checkpoints", "step-000000", "model.safetensors"))]
            for view in ["line", "trajectory", "sharpness", "layers"]:
                f = os.path.join(d, f"{name}-{view}")
                done = os.path.exists(os.path.join(f, "report.html"))
                cells.append(wall_s(f, "report.html") if done else None)
            print(f"| {os.path.basename(d.rstrip('/'))} | {name} | "
                  + " | ".join("-" if c is None else f"{c:.0f} s" for c in cells) + " |")
    # One layer table per architecture (the groups differ).
    shapes = {}
    for run, costs in layers:
        shapes.setdefault(tuple(n for n, _ in costs), []).append((run, costs))
    for names, rows in shapes.items():
        print()
        print("| run | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for run, costs in rows:
            print(f"| {run} | " + " | ".join(f"{c:+.4f}" for _, c in costs) + " |")

main(sys.argv[1:])
