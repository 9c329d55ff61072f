"""A study's report, from its children's folders: per configuration mean ± std over seeds (the value alone for one
seed), the paired difference residual - plain per depth, the k-fold table, and the study's figures."""

from errors import CheckpointError
from figures import plot_layer_grads, plot_study
from files import TEST_MARK, read_json, read_jsonl, write_report
from stats import format_mean_std, format_paired, mean_std, number, paired


def aggregate(kids, results):
    """Rows per configuration (kind, depth): mean ± std of test and best validation accuracy over seeds."""
    rows = {}
    for child in kids:
        rows.setdefault((child.kind, child.depth), []).append(results[child.name])
    out = []
    for (kind, depth), rs in rows.items():
        test_m, test_s = mean_std(r["test_acc"] for r in rs)
        vals = [r["best_val_acc"] for r in rs if r.get("best_val_acc") is not None]
        val_m, val_s = mean_std(vals) if vals else (None, None)
        out.append(
            {
                "model": kind,
                "depth": depth,
                "params": rs[0]["params"],
                "seeds": len(rs),
                "test_acc_mean": test_m,
                "test_acc_std": test_s,
                "best_val_acc_mean": val_m,
                "best_val_acc_std": val_s,
                "train_time_s_mean": mean_std(r["train_time_s"] for r in rs)[0],
                "test_acc": [r["test_acc"] for r in rs],
            }
        )
    return out


def residual_minus_plain(kids, results):
    """Per depth, the paired difference residual - plain in test accuracy over the shared seeds."""
    out = {}
    for depth in sorted({c.depth for c in kids}):
        by = {(c.kind, c.seed): results[c.name]["test_acc"] for c in kids if c.depth == depth}
        seeds = sorted(s for k, s in by if k == "residual" and ("plain", s) in by)
        if seeds:
            out[str(depth)] = paired([by["residual", s] for s in seeds], [by["plain", s] for s in seeds])
    return out


def _summary(path):
    """A child's summary.json with the figures the report needs, as training wrote them; else one line."""
    s = read_json(path, "summary")
    if not (
        isinstance(s, dict)
        and number(s.get("test_acc"))
        and number(s.get("train_time_s"))
        and type(s.get("params")) is int
        and (s.get("best_val_acc") is None or number(s["best_val_acc"]))
    ):
        raise CheckpointError(
            f"{path} is damaged (test_acc, best_val_acc, params or train_time_s is not a number); "
            "restore it or train that child again"
        )
    return s


def report(study_dir, title, kids):
    """summary.json, results.md and the figures, from the children's folders."""
    results = {
        c.name: {
            **_summary(study_dir / c.name / "summary.json"),
            "history": read_jsonl(study_dir / c.name / "metrics.jsonl"),
        }
        for c in kids
    }
    if kids[0].kind == "fold":
        accs = [results[c.name]["best_val_acc"] for c in kids]
        m, s = mean_std(accs)
        lines = [
            "| Fold | Best val acc |",
            "|---|---|",
            *(f"| {i} | {a:.4f} |" for i, a in enumerate(accs, 1)),
            "",
            f"{len(kids)}-fold cross-validation: val acc {m:.4f} ± {s:.4f}",
        ]
        write_report(
            study_dir,
            {"status": "finished", "k_folds": len(kids), "fold_val_acc": accs, "val_acc_mean": m, "val_acc_std": s},
            lines,
        )
        return f"{len(kids)}-fold val acc {m:.4f} ± {s:.4f}"
    rows, diff = aggregate(kids, results), residual_minus_plain(kids, results)
    subset = next((r["test_subset"] for r in results.values() if r.get("test_subset")), 0)
    write_report(
        study_dir,
        {
            "status": "finished",
            "study": title,
            "configurations": rows,
            "residual_minus_plain": diff,
            "test_examples": results[kids[0].name].get("test_examples"),
            "test_subset": subset,
        },
        _table(rows, diff, subset),
        test_subset=subset,
        figures=lambda: _figures(study_dir, title, kids, rows, results),
    )
    best = max(rows, key=lambda r: r["test_acc_mean"])
    return f"best {best['model']} {best['depth']}: test acc {best['test_acc_mean']:.4f}"


def _table(rows, diff, subset):
    """results.md: a row per configuration; mean ± std where it has several seeds, the value alone for one."""
    spread = " mean ± std" if any(r["seeds"] > 1 for r in rows) else ""
    lines = [
        f"| Model | Depth | Params | Test acc{TEST_MARK * bool(subset)}{spread} | Best val acc{spread} | Seeds | "
        "Train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = r["best_val_acc_mean"]
        val = "-" if val is None else format_mean_std(val, r["best_val_acc_std"], r["seeds"])
        lines.append(
            f"| {r['model']} | {r['depth']} | {r['params']:,} | "
            f"{format_mean_std(r['test_acc_mean'], r['test_acc_std'], r['seeds'])} | {val} | {r['seeds']} | "
            f"{r['train_time_s_mean']:.1f} |"
        )
    if diff:
        lines += ["", "| Depth | Residual - plain, test acc (paired over seeds) |", "|---|---|"]
        lines += [f"| {d} | {format_paired(p)} |" for d, p in diff.items()]
    return lines


def _figures(study_dir, title, kids, rows, results):
    """comparison.png (test accuracy against depth, validation curves) and grads.png (first-epoch gradient norm per
    layer of the deepest net of each kind), of the first seed's runs."""
    curves, seed = {}, kids[0].seed
    for c in kids:
        if c.seed == seed:
            curves.setdefault((c.kind, c.depth), results[c.name]["history"])
    plot_study(
        rows, curves, study_dir / "comparison.png", title + (f" (curves: seed {seed})" if len(rows) < len(kids) else "")
    )
    deepest = {}
    for c in kids:
        if c.seed == seed and c.depth >= deepest.get(c.kind, (0, None))[0]:
            deepest[c.kind] = (c.depth, c.name)
    plot_layer_grads(
        {f"{k} {d}": results[n]["history"] for k, (d, n) in deepest.items()},
        study_dir / "grads.png",
        title=f"per-layer gradient norm in the first epoch: deepest net of each kind (seed {seed})",
    )
