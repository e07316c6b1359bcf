#!/usr/bin/env python3
"""Plots `kmeta bench scale --json FILE` runs: one panel per figure, against N (log axis).

    bench/plot-scale.py RESULTS.jsonl OUT.png

Figures that were not reached in a run are left out of that run's point. Needs matplotlib
(bench/scale.sh installs it in a venv of its own).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNITS = {"_ms": "ms", "_mib": "MiB", "_bytes": "bytes"}


def unit(name):
    for suffix, u in UNITS.items():
        if name.endswith(suffix) or suffix + "_" in name:
            return u
    return ""


def main(path, out):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    runs.sort(key=lambda r: r["partitions"])
    names = [k for k in runs[0] if k != "partitions"]
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs = [r["partitions"] for r in runs if r.get(name) is not None]
        ys = [r[name] for r in runs if r.get(name) is not None]
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("partitions", fontsize=8)
        ax.set_ylabel(unit(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        missing = [r["partitions"] for r in runs if r.get(name) is None]
        if missing:
            ax.text(0.02, 0.92, "no figure at " + ", ".join(map(str, missing)),
                    transform=ax.transAxes, fontsize=7, color="red")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("kmeta bench scale: 3 controllers + 3 brokers as processes, RF 3", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
