"""Studies: many exercise1 runs from one command, repeated over seeds, reported as mean ± std.

    python exercise1.py --study mlp_depth --depths 2 4 8 16 32 --seeds 0 1 2 --epochs 10
    python exercise1.py --study cnn_depth --dataset folder --data_root ../shared/data/cifar10-jpeg --seeds 0 1 2
    python exercise1.py --seeds 0 1 2 --depth 8            # one configuration, three seeds

A study folder holds one child run folder per (configuration, seed), exactly as exercise1 leaves them, and
summary.json, results.md, comparison.png and grads.png. Re-running the same command continues it: finished
children are read back, an interrupted one resumes from its last.pt.
"""
import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from checkpoint import load_checkpoint
from models import PRESETS, ModelConfig
from plots import plt, _save
from tracking import UsageError, read_jsonl, write_json

STUDIES = ("mlp_depth", "cnn_depth")
DEFAULT_DEPTHS = {"mlp_depth": (2, 4, 8, 16, 32), "cnn_depth": (20, 32, 44, 56)}


@dataclass(frozen=True)
class Child:
    name: str          # folder name inside the study
    kind: str          # "plain" / "residual" (or the model's name for a seeds-only study)
    depth: int
    cfg: object        # the child's exercise1 RunConfig


def mean_std(values):
    """Mean and sample standard deviation (n - 1); the std of one value is 0."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def children(study, base, depths, seeds):
    """The child runs of a study (study=None: the base configuration once per seed)."""
    if study is None:
        m = base.model
        depth = len(m.mlp_hidden_sizes()) if m.name == "FlexibleMLP" else sum(m.layers)
        return [Child(f"seed{s}", m.name, depth, replace(base, train=replace(base.train, seed=s))) for s in seeds]
    out = []
    for kind in ("plain", "residual"):
        for depth in depths:
            if study == "mlp_depth":
                model = replace(base.model, name="FlexibleMLP", depth=depth, hidden_sizes=(), skips=(),
                                residual=kind == "residual")
            else:
                name = f"{'resnet' if kind == 'residual' else 'plain'}{depth}"
                if name not in PRESETS:
                    raise UsageError(f"--depths {depth}: cnn_depth takes He et al. depths 6n+2 from "
                                     f"{sorted({int(n[5:]) for n in PRESETS if n.startswith('plain')})}")
                model = ModelConfig(name=name, norm="batch")
            for s in seeds:
                out.append(Child(f"{kind}{depth}_seed{s}", kind, depth,
                                 replace(base, model=model, train=replace(base.train, seed=s))))
    return out


def child_state(run_dir):
    """'finished' (summary.json says so), 'interrupted' (a last.pt to resume), or 'new'."""
    summary = Path(run_dir) / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        return "finished"
    return "interrupted" if (Path(run_dir) / "last.pt").exists() else "new"


def run_study(kids, study_dir, train_child):
    """Train every child not finished yet; train_child(child, run_dir, resume_ckpt) -> result dict."""
    results = {}
    for i, child in enumerate(kids, start=1):
        run_dir = Path(study_dir) / child.name
        state = child_state(run_dir)
        if state == "finished":
            print(f"[{i}/{len(kids)}] {child.name}: finished earlier, skipped")
            results[child.name] = json.loads((run_dir / "summary.json").read_text())
        else:
            run_dir.mkdir(exist_ok=True)
            resume = load_checkpoint(run_dir / "last.pt") if state == "interrupted" else None
            print(f"[{i}/{len(kids)}] {child.name}" + (f": resuming from epoch {resume['epoch']}" if resume else ""))
            results[child.name] = train_child(child, run_dir, resume)
        results[child.name]["history"] = read_jsonl(run_dir / "metrics.jsonl")
    return results


def aggregate(kids, results):
    """Rows per configuration (kind, depth): mean ± std of test and best validation accuracy over seeds."""
    rows = {}
    for child in kids:
        rows.setdefault((child.kind, child.depth), []).append(results[child.name])
    out = []
    for (kind, depth), rs in rows.items():
        test_m, test_s = mean_std(r["test_acc"] for r in rs)
        vals = [r["best_val_acc"] for r in rs if r.get("best_val_acc") is not None]
        val_m, val_s = mean_std(vals) if vals else (math.nan, math.nan)
        out.append({"model": kind, "depth": depth, "params": rs[0]["params"], "seeds": len(rs),
                    "test_acc_mean": test_m, "test_acc_std": test_s, "best_val_acc_mean": val_m,
                    "best_val_acc_std": val_s, "train_time_s_mean": statistics.mean(r["train_time_s"] for r in rs),
                    "test_acc": [r["test_acc"] for r in rs]})
    return out


def report(study_dir, title, kids, results):
    rows = aggregate(kids, results)
    write_json(Path(study_dir) / "summary.json", {"study": title, "configurations": rows})
    lines = ["| Model | Depth | Params | Test acc mean ± std | Best val acc mean ± std | Seeds | Train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['depth']} | {r['params']:,} | {r['test_acc_mean']:.4f} ± "
                     f"{r['test_acc_std']:.4f} | {r['best_val_acc_mean']:.4f} ± {r['best_val_acc_std']:.4f} | "
                     f"{r['seeds']} | {r['train_time_s_mean']:.1f} |")
    (Path(study_dir) / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_comparison(rows, kids, results, Path(study_dir) / "comparison.png", title)
    plot_deepest_grads(kids, results, Path(study_dir) / "grads.png")
    return rows


def plot_comparison(rows, kids, results, path, title):
    """Left: final test accuracy against depth, one line per kind, error bars = std over seeds.
    Right: validation accuracy per epoch of each configuration's first seed."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == kind), key=lambda r: r["depth"])
        ax.errorbar([r["depth"] for r in rs], [r["test_acc_mean"] for r in rs], yerr=[r["test_acc_std"] for r in rs],
                    marker="o", capsize=4, label=kind)
    ax.set_xlabel("depth")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    seen = set()
    for child in kids:
        if (child.kind, child.depth) in seen:
            continue
        seen.add((child.kind, child.depth))
        h = results[child.name]["history"]
        ax2.plot([r["epoch"] for r in h], [r["val_acc"] for r in h], ls="--" if child.kind == "plain" else "-",
                 label=f"{child.kind} {child.depth}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_deepest_grads(kids, results, path):
    """Per-layer gradient norm (first epoch, input side left) of the deepest net of each kind."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in dict.fromkeys(c.kind for c in kids):
        deepest = max((c for c in kids if c.kind == kind), key=lambda c: c.depth)
        h = results[deepest.name]["history"]
        if not h:
            continue
        # Main-path layers only: projections/shortcuts sit beside the path, not along it.
        norms = [v for k, v in h[0]["grad_norm"].items() if "proj" not in k and "shortcut" not in k]
        ax.plot(range(1, len(norms) + 1), norms, marker=".", label=f"{kind} {deepest.depth} (epoch 1)")
    ax.set_yscale("log")
    ax.set_xlabel("weight layer (input -> output)")
    ax.set_ylabel("mean gradient norm")
    ax.set_title("vanishing gradients: deepest plain vs deepest residual")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
