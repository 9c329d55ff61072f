"""Figures drawn from metrics.jsonl / summary.json, so they can be redrawn without retraining.

    python plots.py compare runs/A runs/B --metric val_acc --out cmp.png
    python plots.py table runs/A runs/B
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, ever
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history, path):
    """Loss and accuracy per epoch, train and validation."""
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "acc")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], label="train")
        if history and history[0].get(f"val_{key}") is not None:
            ax.plot(ep, [r[f"val_{key}"] for r in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_grads(history, path):
    """Gradient norm of each weight layer per epoch (log scale): input-side layers dark, output-side light."""
    layers = list(history[0]["grad_norm"]) if history else []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(layers):
        ax.plot([r["epoch"] for r in history], [r["grad_norm"][name] for r in history],
                color=cmap(i / max(1, len(layers) - 1)), label=name if len(layers) <= 12 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean gradient norm")
    ax.set_title("per-layer gradient norm (dark = input side)")
    if 0 < len(layers) <= 12:
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_bars(names, values, labels, path, ylabel="test accuracy"):
    """A bar per entry, with `labels` (e.g. parameter counts) written on the bars."""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names)), 4))
    bars = ax.bar(names, values, color=plt.get_cmap("tab10").colors[:len(names)])
    for bar, label, v in zip(bars, labels, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.4f}\n{label}", ha="center",
                va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(values) * 0.95 if values else 0, max(values) * 1.05 if values else 1)
    _save(fig, path)


def plot_overlay(curves, path, metric="val_acc"):
    """curves: {label: history}; one line each for `metric` against epoch."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, history in curves.items():
        ax.plot([r["epoch"] for r in history], [r.get(metric) for r in history], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(cm, classes, path):
    """cm (K, K) counts, rows = true class, columns = predicted; each row normalised to 1."""
    import numpy as np
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k + 2), max(3.5, 0.45 * k + 1.5)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def _read_history(run):
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        sys.exit(f"error: {path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="overlay one metric of several runs")
    c.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    c.add_argument("--metric", default="val_acc", help="metrics.jsonl key to plot (default: val_acc)")
    c.add_argument("--out", default="compare.png", help="output image (default: compare.png)")
    t = sub.add_parser("table", help="print a Markdown table of the runs' summary.json")
    t.add_argument("runs", nargs="+", help="run folders (each with summary.json)")
    args = p.parse_args(argv)
    if args.cmd == "compare":
        plot_overlay({Path(r).name: _read_history(r) for r in args.runs}, args.out, args.metric)
        print(args.out)
    else:
        print("| Run | Params | Best val acc | Test acc | Test loss | Epochs | Train time (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in args.runs:
            path = Path(r) / "summary.json"
            if not path.exists():
                sys.exit(f"error: {path} not found")
            s = json.loads(path.read_text())
            print(f"| {Path(r).name} | {s.get('params', 0):,} | {s.get('best_val_acc', float('nan')):.4f} | "
                  f"{s.get('test_acc', float('nan')):.4f} | {s.get('test_loss', float('nan')):.4f} | "
                  f"{s.get('epochs_run', '')} | {s.get('train_time_s', 0):.1f} |")


if __name__ == "__main__":
    main()
