#!/usr/bin/env python3
"""Markdown rows of the README's methods table from the reports `scripts/methods-table.sh`
leaves in OUT: per run, top-1 after pruning and at the end (held-out split of the run),
top-1 on the lossless subset when evaluated, params, MACs, ORT latency ratio, wall time.

    python3 scripts/methods-table.py target/methods-table
"""
import json
import pathlib
import re
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/methods-table")
print("| run | stages | top-1 after pruning | top-1 (test split) | top-1 (lossless subset) "
      "| params | MACs | ORT latency × | wall |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def si(v):
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if v >= f:
            return f"{v / f:.2f} {unit}"
    return str(v)


for report in sorted(out.glob("*.json")):
    if report.name.endswith(".lossless.json"):
        continue
    r = json.loads(report.read_text())
    stages = r["stages"]
    names = [s["stage"] for s in stages]
    pruned = next(s for s in stages if s["stage"] in ("prune", "inherit", "mend", "pan"))
    # Weight-masked runs: the kept share of the filter-bank weights (the params are dense).
    kept = re.search(r"weights kept \(([0-9.]+)%\)", pruned.get("note", ""))
    kept = f" ({kept.group(1)}% of weights non-zero)" if kept and r.get("masks") else ""
    first, last = stages[0], stages[-1]
    lossless = report.parent / (report.stem + ".lossless.json")
    ll = "-"
    if lossless.exists():
        acc = json.loads(lossless.read_text()).get("accuracy") or {}
        if "top1" in acc:
            ll = f"{acc['top1'] * 100:.2f}%"
    wall = report.with_suffix(".wall")
    wall = f"{int(wall.read_text()) / 60:.1f} min" if wall.exists() else "-"
    lat = r.get("latency")
    lat = f"{lat['ratio']:.3f}" if lat else "-"
    print(f"| {report.stem} | {','.join(names[1:])} | {pruned['top1'] * 100:.2f}% "
          f"| **{last['top1'] * 100:.2f}%** (original {first['top1'] * 100:.2f}%) | {ll} "
          f"| {si(last['params'])}{kept} | {si(last['macs'])} ({last['macs'] / first['macs']:.3f}) "
          f"| {lat} | {wall} |")
