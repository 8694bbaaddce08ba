#!/usr/bin/env python3
"""Tables of docs/results/ace.md from the searches under runs/.

Reads every runs/ace-TASK-STRATEGY-sSEED/search.json written by
`docs/results/ace-runs.sh` and prints, per task, one row per search and
one row per strategy with the mean and standard deviation over its seeds.
Scores are in points (F1 or accuracy x 100). Standard library only.

Usage: docs/results/ace-table.py [RUNS_DIR]
"""
import json
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"^ace-(?P<task>.+)-(?P<strategy>ace|random|all|weighted)-s(?P<seed>\d+)$")


def searches(runs):
    for path in sorted(Path(runs).glob("ace-*-s*/search.json")):
        match = NAME.match(path.parent.name)
        if not match:
            continue
        search = json.loads(path.read_text())
        episodes = [json.loads(line) for line in (path.parent / "episodes.jsonl").read_text().splitlines() if line]
        yield dict(
            task=match["task"],
            strategy=match["strategy"],
            seed=int(match["seed"]),
            search=search,
            episodes=episodes,
        )


def mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def run_row(run):
    s = run["search"]
    kept = ", ".join(s["selected"])
    finished = "" if not s.get("stopped") else f" (stopped after {s['episodes']})"
    return (
        f"| {run['strategy']} | {run['seed']}{finished} | {100 * s['dev']:.2f} | {100 * s['test']:.2f} "
        f"| {s['best']['episode']} | {kept} | {sum(e['train_s'] for e in run['episodes']):,.0f} "
        f"| {s['wall_s']:,.0f} | {s['peak_rss_mb']:,.0f} |"
    )


def sigma_rows(task_runs):
    """sigma(theta) per candidate at the end of each ace or weighted search."""
    learned = [r for r in task_runs if r["strategy"] in ("ace", "weighted")]
    if not learned:
        return
    names = [c if isinstance(c, str) else c["name"] for c in learned[0]["search"]["candidates"]]
    print("| search | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for r in learned:
        p = r["search"]["probabilities"]
        print(f"| {r['strategy']} s{r['seed']} | " + " | ".join(f"{x:.3f}" for x in p) + " |")
    print()


def main():
    runs = sys.argv[1] if len(sys.argv) > 1 else "runs"
    by_task = {}
    for run in searches(runs):
        by_task.setdefault(run["task"], []).append(run)
    order = ["all", "weighted", "random", "ace"]
    for task, task_runs in by_task.items():
        task_runs.sort(key=lambda r: (order.index(r["strategy"]), r["seed"]))
        metric = task_runs[0]["search"]["metric"]
        print(f"### {task} ({metric})\n")
        print("| strategy | seed | best dev | test | episode of the best dev | kept subset | train s | wall s | peak RSS (MB) |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
        for run in task_runs:
            print(run_row(run))
        print()
        print(f"| strategy | searches | best dev | test | episode of the best dev |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for strategy in order:
            done = [r for r in task_runs if r["strategy"] == strategy and not r["search"].get("stopped")]
            if not done:
                continue
            dev = [100 * r["search"]["dev"] for r in done]
            test = [100 * r["search"]["test"] for r in done]
            best = [float(r["search"]["best"]["episode"]) for r in done]
            print(f"| {strategy} | {len(done)} | {mean_std(dev)} | {mean_std(test)} | {mean_std(best)} |")
        print()
        sigma_rows(task_runs)


if __name__ == "__main__":
    main()
