#!/usr/bin/env python3
"""Training curves of one or several cformer runs.

  tools/plot_runs.py RUN_DIR... [-o curves.png] [--labels a,b,...]

Reads each RUN_DIR/log.jsonl and draws four panels: training loss (bits per byte) and validation
bits per byte, each against steps and against wall time. Runs are labelled by their directory
name (or --labels). Needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3).
"""
import argparse, json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_log(run):
    path = os.path.join(run, "log.jsonl")
    train, valid = [], []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    sys.exit(f"plot_runs: {path}:{n}: not JSON")
                if "eval_bpb" in r:
                    if r.get("split", "valid") == "valid":
                        valid.append((r["step"], r.get("elapsed_s", 0.0), r["eval_bpb"]))
                elif "bpb" in r:
                    train.append((r["step"], r.get("elapsed_s", 0.0), r["bpb"]))
    except OSError as e:
        sys.exit(f"plot_runs: {path}: {e.strerror}")
    return train, valid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("-o", "--output", default="curves.png")
    ap.add_argument("--labels", help="comma-separated labels, one per run")
    a = ap.parse_args()
    labels = a.labels.split(",") if a.labels else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(labels) != len(a.runs):
        sys.exit("plot_runs: --labels: need one label per run")
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    for run, label in zip(a.runs, labels):
        train, valid = read_log(run)
        if not train and not valid:
            print(f"plot_runs: {run}: no logged steps", file=sys.stderr)
        for col, key in ((0, 0), (1, 1)):
            if train:
                ax[0][col].plot([t[key] for t in train], [t[2] for t in train], label=label, lw=1)
            if valid:
                ax[1][col].plot([v[key] for v in valid], [v[2] for v in valid], "o-", label=label, ms=3)
    for row, what in ((0, "training loss (bits per byte)"), (1, "validation bits per byte")):
        for col, x in ((0, "step"), (1, "wall time (s)")):
            ax[row][col].set_xlabel(x)
            ax[row][col].set_ylabel(what)
            ax[row][col].grid(alpha=0.3)
            ax[row][col].legend(fontsize=8)
    fig.suptitle("cformer runs")
    fig.tight_layout()
    fig.savefig(a.output, dpi=100)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
