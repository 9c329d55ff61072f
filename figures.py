"""Figures of runs and studies, drawn from metrics.jsonl / summary.json records.

Every plot function saves one titled PNG (atomically, never over a link or device) and returns the data it
drew, read back from the figure. plots.py redraws them from a finished run's folder.
"""

import errno
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, ever
warnings.filterwarnings("ignore", "Glyph .* missing from")  # a run named in another script: boxes, not a warning
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from files import atomic_write

MARKERS_UP_TO = 20  # a line of this many points or fewer marks each point, so one epoch still shows
WORDS = {"train": "training", "val": "validation", "acc": "accuracy", "lr": "learning rate", "s": "(s)"}
FAMILIES = {"plain": "Blues", "residual": "Oranges"}  # colour family per kind, the same in every figure


def save_figure(fig, path):
    """Save and close fig, through the atomic writer: a full disk leaves no half figure."""
    path = Path(path)
    try:
        if path.is_symlink() or path.exists() and not path.is_file():  # a link, device or FIFO: never replaced
            raise OSError(errno.EEXIST, "it exists and is not a regular file", str(path))
        _wrap_titles(fig)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix[1:] or "png"))
    except OSError as e:  # matplotlib's own errors name no file
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        plt.close(fig)


def _wrap_titles(fig):
    """Break titles (long run names) into lines that fit their axes, or the figure for its suptitle."""
    width_in = fig.get_figwidth()
    parts = [(ax.title, ax.get_position().width * width_in) for ax in fig.axes]
    parts += [(fig._suptitle, width_in)] if fig._suptitle is not None else []
    for text, inches in parts:
        chars = max(20, int(inches * 72 / (0.6 * text.get_fontsize())))  # about 0.6 em per character
        text.set_text(
            "\n".join(textwrap.fill(line, chars, break_long_words=True) for line in text.get_text().splitlines())
        )


def plottable(v):
    """A number a figure or table can show (finite, and not so large that float() overflows)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300


def _pretty(key):
    """metrics key -> axis label: "val_acc" -> "validation accuracy"."""
    return " ".join(WORDS.get(w, w) for w in key.split("_"))


def _line(ax, xs, ys, label=None, **kw):
    """Plot the numeric ys against xs (missing values left out); returns the (xs, ys) the line holds."""
    pts = [(x, y) for x, y in zip(xs, ys) if plottable(y)]
    kw.setdefault("marker", "o" if len(pts) <= MARKERS_UP_TO else None)
    (line,) = ax.plot([x for x, _ in pts], [y for _, y in pts], label=label, markersize=4, **kw)
    return np.asarray(line.get_xdata()).tolist(), np.asarray(line.get_ydata()).tolist()


def _dress(ax, title, xlabel, ylabel, lines=True):
    """Titles, labels and legend; a line plot (x: epochs, depths, layers) also gets integer x ticks and a grid."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if lines:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _style(kind, shade=0.75):
    """Colour and line style of a kind (plain dashed); shade in (0, 1] goes from light to dark."""
    family = FAMILIES.get(kind) or ("Greens", "Purples", "Reds", "Greys")[sum(map(ord, kind)) % 4]  # by name
    return {"color": plt.get_cmap(family)(0.35 + 0.6 * shade), "ls": "--" if kind == "plain" else "-"}


def plot_curves(history, path, title="training curves", best_epoch=None):
    """Loss and accuracy per epoch, train and validation; best_epoch (the weights kept and tested) marked by a dotted
    line. Returns {metrics key: (epochs, values)}."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    drawn = {}
    for ax, key in zip(axes, ("loss", "acc")):
        for split, name in (("train", "train"), ("val", "validation")):
            ys = [r.get(f"{split}_{key}") for r in history]
            if any(map(plottable, ys)):
                drawn[f"{split}_{key}"] = _line(ax, [r["epoch"] for r in history], ys, label=name)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch ({best_epoch})")
        _dress(ax, _pretty(key), "epoch", _pretty(key))
    fig.suptitle(title)
    save_figure(fig, path)
    return drawn


LEGEND_UP_TO = 12  # layers named in a legend; deeper nets get a colour bar from the input side to the output


def plot_grads(history, path, title="per-layer gradient norm (dark = input side)"):
    """Gradient norm of each weight layer per epoch (log scale), coloured from the input side (dark) to the output
    (light): a legend names up to LEGEND_UP_TO layers, a colour bar numbers more. Returns {layer: (epochs, norms)}."""
    layers = list(history[0]["grad_norm"]) if history else []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    drawn = {
        name: _line(
            ax,
            [r["epoch"] for r in history],
            [r["grad_norm"].get(name) for r in history],
            label=name if len(layers) <= LEGEND_UP_TO else None,
            color=cmap(i / max(1, len(layers) - 1)),
        )
        for i, name in enumerate(layers)
    }
    if len(layers) > LEGEND_UP_TO:
        scale = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(1, len(layers)))
        fig.colorbar(scale, ax=ax, fraction=0.046, label=f"weight layer, 1 (input) to {len(layers)} (output)")
    ax.set_yscale("log")
    _dress(ax, title, "epoch", "mean gradient norm")
    save_figure(fig, path)
    return drawn


def plot_bars(names, values, labels, path, ylabel="test accuracy", title=None):
    """A bar per entry with its value and label (e.g. parameter count); all values in [0, 1] (accuracies) keep
    the axis at or under 1. Returns {name: bar height}."""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names)), 4))
    bars = ax.bar(names, values, color=plt.get_cmap("tab10").colors[: len(names)])
    top = max([0, *values]) * 1.15 or 1.0
    ax.set_ylim(min([0, *values]), min(top, 1.0) if values and all(0 <= v <= 1 for v in values) else top)
    for bar, label, v in zip(bars, labels, values):
        inside = v > 0.3 * ax.get_ylim()[1]  # tall bar: text inside its top; short bar: just above it
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            v,
            f"{v:.4f}\n{label}",
            ha="center",
            fontsize=8,
            va="top" if inside else "bottom",
            color="white" if inside else "black",
            clip_on=True,
        )
    _dress(ax, title or ylabel, "", ylabel, lines=False)
    save_figure(fig, path)
    return {n: float(b.get_height()) for n, b in zip(names, bars)}


def plot_overlay(curves, path, metric="val_acc", title=None):
    """curves: {label: history}; one line each for `metric` against epoch. Returns {label: (epochs, values)}."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = {
        label: _line(ax, [r["epoch"] for r in h], [r.get(metric) for r in h], label=label)
        for label, h in curves.items()
    }
    _dress(ax, title or f"{_pretty(metric)} per epoch", "epoch", _pretty(metric))
    save_figure(fig, path)
    return drawn


def _matrix(fig, ax, a, cmap, cbar_label, text, **kw):
    """a (rows, columns) as coloured cells, NaN left blank, text(i, j, v) -> (string, colour) in each cell."""
    im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, **kw)
    for (i, j), v in np.ndenumerate(a):
        s, color = text(i, j, v)
        if s:
            ax.text(j, i, s, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, label=cbar_label)
    return np.ma.filled(im.get_array().astype(float), np.nan)


def plot_confusion(cm, classes, path, title="confusion matrix"):
    """cm (K, K) counts, rows = true class; each row normalised to 1 (counts in the cells up to 20 classes).
    Returns the normalised array drawn."""
    cm = np.asarray(cm, dtype=float)
    norm, k = cm / np.maximum(cm.sum(1, keepdims=True), 1), len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * k + 2), max(3.5, 0.45 * k + 1.5)))
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    drawn = _matrix(
        fig,
        ax,
        norm,
        "Blues",
        "fraction of the true class",
        lambda i, j, v: (f"{cm[i, j]:.0f}" if cm[i, j] and k <= 20 else "", "white" if v > 0.5 else "black"),
        vmin=0,
        vmax=1,
    )
    _dress(ax, title, "predicted class", "true class", lines=False)
    save_figure(fig, path)
    return drawn


def plot_heatmap(values, row_labels, col_labels, path, title, cbar_label, fmt="{:.4f}", xlabel="", ylabel=""):
    """values: 2-D list (rows x columns), None/NaN = no result (blank cell, "-"). Returns the array drawn."""
    a = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(col_labels) + 2.5), max(3, 0.6 * len(row_labels) + 1.5)))
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    lo, hi = (np.nanmin(a), np.nanmax(a)) if np.isfinite(a).any() else (0.0, 1.0)
    drawn = _matrix(
        fig,
        ax,
        a,
        "viridis",
        cbar_label,
        lambda i, j, v: (
            "-" if np.isnan(v) else fmt.format(v),
            "black" if np.isnan(v) or v > (lo + hi) / 2 else "white",
        ),
        vmin=lo,
        vmax=max(hi, lo + 1e-9),
    )
    _dress(ax, title, xlabel, ylabel, lines=False)
    save_figure(fig, path)
    return drawn


def plot_study(rows, curves, path, title):
    """Left: test accuracy mean ± std against depth, one line per kind. Right: validation accuracy per epoch
    of each (kind, depth) in `curves`; training accuracy, said so, for a run without a validation split.
    Returns {"test_acc": {kind: (depths, means, stds)}, "curves": {label: (epochs, values)}}."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = {"test_acc": {}, "curves": {}}
    several = any(r.get("seeds", 2) > 1 for r in rows)  # one seed: its values, without error bars
    for kind in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == kind), key=lambda r: r["depth"])
        bars = ax.errorbar(
            [r["depth"] for r in rs],
            [r["test_acc_mean"] for r in rs],
            capsize=4,
            label=kind,
            yerr=[r["test_acc_std"] for r in rs] if several else None,
            marker="o",
            **_style(kind),
        )
        drawn["test_acc"][kind] = (
            *(np.asarray(d).tolist() for d in bars.lines[0].get_data()),
            [float(s[1, 1] - s[0, 1]) / 2 for s in bars.lines[2][0].get_segments()] if bars.lines[2] else None,
        )
    _dress(ax, title, "depth", "test accuracy (mean ± std over seeds)" if several else "test accuracy (one seed)")
    depths = sorted({d for _, d in curves})
    for (kind, depth), h in curves.items():
        key = "val_acc" if any(plottable(r.get("val_acc")) for r in h) else "train_acc"
        label = f"{kind} {depth}" + ("" if key == "val_acc" else " (train acc: no validation split)")
        drawn["curves"][label] = _line(
            ax2,
            [r["epoch"] for r in h],
            [r.get(key) for r in h],
            label=label,
            **_style(kind, (depths.index(depth) + 1) / len(depths)),
        )
    fallback = any(k.endswith("split)") for k in drawn["curves"])
    _dress(
        ax2,
        "accuracy per epoch (darker = deeper)",
        "epoch",
        "validation accuracy" + (" (training where no validation split)" if fallback else ""),
    )
    save_figure(fig, path)
    return drawn


def plot_layer_grads(histories, path, title="per-layer gradient norm in the first epoch"):
    """histories: {label: history}; the first epoch's gradient norm of each main-path weight layer (projections
    and shortcuts left out), input side left, log y; "plain ..." labels dashed. Returns {label: (layer, norms)}."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = {}
    for label, h in histories.items():
        if h:
            norms = [v for k, v in h[0]["grad_norm"].items() if "proj" not in k and "shortcut" not in k]
            drawn[label] = _line(ax, range(1, len(norms) + 1), norms, label=label, **_style(label.split(" ")[0]))
    ax.set_yscale("log")
    _dress(ax, title, "weight layer (input -> output)", "mean gradient norm")
    save_figure(fig, path)
    return drawn
