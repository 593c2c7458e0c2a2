#!/usr/bin/env python3
"""The pictures of the attention-variant study (tools/study.sh).

  tools/plot_study.py OUT_DIR

Reads OUT_DIR/results.tsv (written by tools/study.sh) and OUT_DIR/runs/*/log.jsonl, and writes
  OUT_DIR/loss_steps.png    training loss (bits per byte) against steps, one line per variant, with the
                            validation points the runs logged
  OUT_DIR/loss_time.png     the same against wall time (the run's elapsed_s)
  OUT_DIR/bpb_context.png   validation bits per byte against the evaluation context
Needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3).
"""
import os
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_study: matplotlib is missing (Debian: apt-get install python3-matplotlib)")

import json


def fail(msg):
    sys.exit(f"plot_study: {msg}")


def read_results(path):
    """{variant: {what: {key: value}}} in file order, from NAME TAB WHAT TAB key=value ... lines."""
    res = {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    fail(f"{path}:{n}: expected NAME, WHAT and the values separated by tabs")
                name, what, vals = parts
                kv = {}
                if not vals.startswith("na "):
                    for item in vals.split():
                        k, _, v = item.partition("=")
                        kv[k] = v
                res.setdefault(name, {})[what] = kv
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    return res


def read_log(path):
    """Training and validation (step, elapsed_s, bpb), one per step: a step logged again after a resume
    keeps its last line."""
    steps, valid = {}, {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    fail(f"{path}:{n}: not JSON")
                if "loss" in r and "bpb" in r:
                    steps[r["step"]] = (r.get("elapsed_s", 0.0), r["bpb"])
                elif r.get("split") == "valid" and "eval_bpb" in r:
                    valid[r["step"]] = (r.get("elapsed_s", 0.0), r["eval_bpb"])
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    return ([(s, t, b) for s, (t, b) in sorted(steps.items())],
            [(s, t, b) for s, (t, b) in sorted(valid.items())])


MARKERS = "os^vDPX*h<"


def style(i, marker=False):
    # ten colours, then a second line style; markers tell apart the points that coincide
    s = {"color": plt.cm.tab10(i % 10), "linestyle": "-" if i < 10 else "--"}
    if marker:
        s["marker"] = MARKERS[i % len(MARKERS)]
    return s


def main():
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    res = read_results(os.path.join(out, "results.tsv"))
    names = list(res)
    if not names:
        fail(f"{out}/results.tsv: no results")

    for x, fname, xlabel in ((0, "loss_steps.png", "step"), (1, "loss_time.png", "wall time (s)")):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, name in enumerate(names):
            log = os.path.join(out, "runs", name, "log.jsonl")
            if not os.path.exists(log):
                continue
            pts, val = read_log(log)
            if pts:
                ax.plot([p[0] if x == 0 else p[1] for p in pts], [p[2] for p in pts], label=name, lw=1, **style(i))
            if val:
                st = style(i, marker=True)
                st["linestyle"] = ":"
                ax.plot([p[0] if x == 0 else p[1] for p in val], [p[2] for p in val], ms=4, **st)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("bits per byte: training loss (lines), validation (dotted, markers)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("training loss against " + ("steps" if x == 0 else "wall time"))
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ctxs = set()
    for i, name in enumerate(names):
        pts = []
        for what, kv in res[name].items():
            if what.startswith("ctx-") and "bpb" in kv:
                pts.append((int(what[4:]), float(kv["bpb"])))
        pts.sort()
        if not pts:
            continue
        ctxs.update(c for c, _ in pts)
        kind = res[name].get("valid", {}).get("attention", "")
        label = name + {"xl": " (memory C/2)", "infini": " (streamed, calls of C)"}.get(kind, "")
        ax.plot([c for c, _ in pts], [b for _, b in pts], ms=5, label=label, **style(i, marker=True))
    ax.set_xscale("log", base=2)
    if ctxs:
        ax.set_xticks(sorted(ctxs))
        ax.set_xticklabels([str(c) for c in sorted(ctxs)])
    ax.set_xlabel("evaluation context C (bytes)")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("bits per byte against the evaluation context")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bpb_context.png"), dpi=100)
    plt.close(fig)
    print(f"plot_study: wrote {out}/loss_steps.png, loss_time.png, bpb_context.png")


if __name__ == "__main__":
    main()
