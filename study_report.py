"""A study's report, from its children's folders: mean ± std over seeds per configuration, residual - plain paired
over seeds, the children that diverged or failed, results.md, summary.json and the figures."""

import numpy as np

from errors import CheckpointError
from figures import plot_layer_grads, plot_study
from files import TEST_MARK, read_json, read_jsonl, write_report
from run import PREDICTIONS, load_predictions
from rundir import finished
from stats import format_mcnemar, format_mean_std, format_paired, mcnemar, mean_std, number, paired


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


def residual_vs_plain_mcnemar(kids, study_dir):
    """Per depth, McNemar's exact test residual vs plain on the same test examples, pooled over the shared seeds
    (from the children's test_predictions.npy; a depth where one is missing, as in older folders, is left out)."""
    out = {}
    for depth in sorted({c.depth for c in kids if c.depth is not None}):
        by = {(c.kind, c.seed): _correct_of(study_dir / c.name / PREDICTIONS) for c in kids if c.depth == depth}
        pairs = [(by["residual", s], by["plain", s]) for k, s in by if k == "residual" and ("plain", s) in by]
        if pairs and all(a is not None and b is not None and len(a) == len(b) for a, b in pairs):
            out[str(depth)] = mcnemar(*(np.stack([p[i] for p in pairs]) for i in (0, 1)))  # pooled over seeds
    return out


def _correct_of(path):
    """Which test examples a run got right, from its test_predictions.npy (None: not there or not readable)."""
    try:
        return load_predictions(path)[2]
    except CheckpointError:
        return None


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


def _fold_report(study_dir, kids, ok, results, lost):
    """A k-fold run's report: each fold's best validation accuracy, and the mean ± std of the finished ones."""
    accs = [results[c.name]["best_val_acc"] if c in ok else None for c in kids]
    m, s = mean_std([a for a in accs if a is not None]) if ok else (None, None)
    lines = [
        "| Fold | Best val acc |",
        "|---|---|",
        *(f"| {i} | {'-' if a is None else f'{a:.4f}'} |" for i, a in enumerate(accs, 1)),
        "",
        f"{len(kids)}-fold cross-validation: val acc " + (f"{m:.4f} ± {s:.4f}" if ok else "- (no fold finished)"),
    ]
    summary = {"status": "finished", "k_folds": len(kids), "fold_val_acc": accs, "val_acc_mean": m, "val_acc_std": s}
    write_report(study_dir, summary | ({"failed_children": lost} if lost else {}), lines + _lost_lines(lost, len(kids)))
    return f"{len(kids)}-fold val acc " + (f"{m:.4f} ± {s:.4f}" if ok else "-") + _lost_note(lost)


def report(study_dir, title, kids):
    """summary.json, results.md and the figures, from the children's folders. Children that diverged or failed
    are listed with why, and left out of the means (which are over the finished ones)."""
    ok = [c for c in kids if finished(study_dir / c.name)]
    results = {
        c.name: {
            **_summary(study_dir / c.name / "summary.json"),
            "history": read_jsonl(study_dir / c.name / "metrics.jsonl"),
        }
        for c in ok
    }
    lost = {c.name: _outcome(study_dir / c.name / "summary.json") for c in kids if c not in ok}
    extra = {"failed_children": lost} if lost else {}
    if kids[0].kind == "fold":
        return _fold_report(study_dir, kids, ok, results, lost)
    rows, diff = aggregate(ok, results), residual_minus_plain(ok, results)
    subset = next((r["test_subset"] for r in results.values() if r.get("test_subset")), 0)
    exact = residual_vs_plain_mcnemar(ok, study_dir)
    summary = {"status": "finished", "study": title, "configurations": rows, "residual_minus_plain": diff}
    summary["residual_vs_plain_mcnemar"] = exact
    summary |= {"test_examples": next((r.get("test_examples") for r in results.values()), None), "test_subset": subset}
    write_report(
        study_dir,
        summary | extra,
        _table(rows, diff, subset) + _mcnemar_table(exact) + _lost_lines(lost, len(kids)),
        test_subset=subset,
        figures=(lambda: _figures(study_dir, title, ok, results, rows)) if ok else None,
    )
    if not rows:
        return f"no child finished{_lost_note(lost)}"
    best = max(rows, key=lambda r: r["test_acc_mean"])
    return f"best {best['model']} {best['depth']}: test acc {best['test_acc_mean']:.4f}{_lost_note(lost)}"


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


def _mcnemar_table(exact):
    if not exact:
        return []
    lines = ["", "| Depth | Residual vs plain, example by example (pooled over seeds) |", "|---|---|"]
    return lines + [f"| {d} | {format_mcnemar(m, 'residual', 'plain')} |" for d, m in exact.items()]


def _figures(study_dir, title, kids, results, rows):
    """comparison.png and grads.png, of the finished children `kids`."""
    curves, seed = {}, kids[0].seed  # the curves and gradients drawn are of the first seed's runs
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


def _outcome(path):
    """A diverged or failed child's summary.json: its status, why, and the epochs it ran."""
    s = read_json(path, "summary")
    return {"status": s.get("status"), "error": str(s.get("error", "")), "epochs_run": s.get("epochs_run")}


def _lost_lines(lost, total):
    """results.md's table of the children that diverged or failed (none: no lines)."""
    if not lost:
        return []
    lines = ["", "| Child | Outcome | Epochs run | Why |", "|---|---|---|---|"]
    for name, o in lost.items():
        why = " ".join(o["error"].split()).replace("|", "/")[:200]
        lines.append(f"| {name} | {o['status']} | {'-' if o['epochs_run'] is None else o['epochs_run']} | {why} |")
    return lines + [
        "",
        f"{len(lost)} of {total} children diverged or failed and are left out of the means; a re-run keeps them "
        "as they are, --retry_failed trains them again.",
    ]


def _lost_note(lost):
    return f"; {len(lost)} diverged or failed (--retry_failed trains them again)" if lost else ""
