"""exercise2's reports: the teacher, the student alone and the distilled student side by side (one seed, several
seeds with paired statistics, or a temperature x alpha grid), as results.md, summary.json and figures."""

import numpy as np

from config import PHASES
from figures import plot_bars, plot_heatmap, plot_overlay
from files import TEST_MARK, write_report
from stats import (
    bootstrap_diff,
    bootstrap_gap_closed,
    format_mcnemar,
    format_mean_std,
    format_paired,
    gap_closed,
    mcnemar,
    mean_std,
    paired,
)


def report(results, cfg, run_dir):
    """summary.json, results.md and the figures: the classic three phases, or per seed and (T, alpha)."""
    if cfg.distill.seeds or cfg.distill.study:
        return report_multi(results, cfg, run_dir)
    teacher_preds = results["teacher"]["test_preds"]
    out = {}
    for name, r in results.items():
        out[name] = {
            k: r.get(k) for k in ("test_acc", "test_loss", "params", "train_time_s", "best_val_acc", "best_epoch")
        }
        if name != "teacher":
            out[name]["agreement_with_teacher"] = (r["test_preds"] == teacher_preds).float().mean().item()
    alone, teach = out["student_baseline"]["test_acc"], out["teacher"]["test_acc"]
    for name in PHASES[1:]:
        out[name]["gap_closed"] = gap_closed(out[name]["test_acc"], alone, teach)
    out["status"] = "finished"
    out["config"] = {
        "temperature": cfg.distill.temperature,
        "alpha": cfg.distill.alpha,
        "cache_teacher": cfg.distill.cache_teacher,
        "dataset": cfg.data.dataset,
    }
    n_test, subset = len(teacher_preds), cfg.data.test_subset
    out["test_examples"], out["test_subset"] = n_test, subset
    lines = [
        f"| Model | Params | Test acc{TEST_MARK * bool(subset)} | Test errors | Test loss | Train time (s) | "
        "Agreement with teacher | Gap closed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        r = out[name]
        agree = f"{r['agreement_with_teacher']:.4f}" if "agreement_with_teacher" in r else "-"
        gap = f"{r['gap_closed']:.1%}" if r.get("gap_closed") is not None else "-"
        lines.append(
            f"| {name} | {r['params']:,} | {r['test_acc']:.4f} | {round((1 - r['test_acc']) * n_test)} | "
            f"{r['test_loss']:.4f} | {r['train_time_s']:.1f} | {agree} | {gap} |"
        )
    lines += _distilled_vs_alone(results, out["student_distill"])
    plot_bars(
        list(PHASES),
        [out[n]["test_acc"] for n in PHASES],
        [f"{out[n]['params'] / 1e6:.2f}M params" for n in PHASES],
        run_dir / "comparison.png",
        title=f"{run_dir.name}: test accuracy",
    )
    plot_overlay(
        {n: results[n]["history"] for n in PHASES if results[n]["history"]},
        run_dir / "curves.png",
        title=f"{run_dir.name}: validation accuracy per phase",
    )
    write_report(run_dir, out, lines, test_subset=subset)  # W&B: wandb_reports.distill_to_wandb
    return out


def _correct(r):
    return r["test_correct"].cpu().numpy()


def _distilled_vs_alone(results, out):
    """McNemar's exact test, and paired bootstrap intervals of distilled - alone and of the gap closed, on the same
    test examples (into `out`, and as results.md's lines)."""
    a, b, t = (_correct(results[n]) for n in ("student_distill", "student_baseline", "teacher"))
    out["mcnemar_vs_alone"], boot = mcnemar(a, b), bootstrap_diff(a, b)
    out["bootstrap_vs_alone"], gap = boot, bootstrap_gap_closed(a, b, t)
    out["bootstrap_gap_closed"] = gap
    lo, hi = boot["ci95"]
    gap_ci = "n/a" if gap["ci95"][0] is None else f"{gap['ci95'][0]:.1%} .. {gap['ci95'][1]:.1%}"
    return [
        "",
        f"Distilled vs alone, example by example: {format_mcnemar(out['mcnemar_vs_alone'], 'distilled', 'alone')}; "
        f"test acc difference {boot['mean']:+.4f} (paired bootstrap 95% CI {lo:+.4f} .. {hi:+.4f}); gap closed, "
        f"paired bootstrap 95% CI {gap_ci}",
    ]


def _mcnemar_lines(results, rows):
    """Per (T, alpha): McNemar distilled vs alone for each seed and pooled over the seeds both finished (into each
    row, and as results.md's lines)."""
    kids = [r for n, r in results.items() if n != "teacher"]
    alone = {r["child"].seed: r for r in kids if r["child"].kind == "student_baseline"}
    lines = ["", "| T | alpha | McNemar distilled vs alone, pooled over seeds | Per seed (p) |", "|---|---|---|---|"]
    for row in rows:
        setting = (row["temperature"], row["alpha"])
        distilled = [r for r in kids if r["child"].kind == "student_distill" and _setting(r) == setting]
        pairs = {r["child"].seed: (r, alone[r["child"].seed]) for r in distilled if r["child"].seed in alone}
        if not pairs:
            continue
        per = {s: mcnemar(_correct(d), _correct(b)) for s, (d, b) in sorted(pairs.items())}
        pooled = mcnemar(*(np.stack([_correct(p[i]) for p in pairs.values()]) for i in (0, 1)))
        row["mcnemar_pooled"], row["mcnemar_per_seed"] = pooled, {str(s): m for s, m in per.items()}
        cells = ", ".join(f"seed {s}: {m['p_value']:.3g}" for s, m in per.items())
        lines.append(f"| {setting[0]:g} | {setting[1]:g} | {format_mcnemar(pooled, 'distilled', 'alone')} | {cells} |")
    return lines if len(lines) > 3 else []


def _setting(r):
    d = r["child"].cfg.distill
    return d.temperature, d.alpha


def report_multi(results, cfg, run_dir):
    """Students over seeds (and a T x alpha grid): mean ± std, paired distilled - alone (over the seeds both
    finished), gap closed; students that diverged or failed are listed and left out."""
    lost = {n: r for n, r in results.items() if "test_acc" not in r}
    results = {n: r for n, r in results.items() if n not in lost}
    teacher = results["teacher"]
    alone = {
        r["child"].seed: r["test_acc"]
        for r in results.values()
        if "child" in r and r["child"].kind == "student_baseline"
    }
    configs = {}  # (T, alpha) -> {seed: test acc} of the distilled students
    for n, r in results.items():
        if n != "teacher" and r["child"].kind == "student_distill":
            d = r["child"].cfg.distill
            configs.setdefault((d.temperature, d.alpha), {})[r["child"].seed] = r["test_acc"]
    seeds = sorted(alone)
    m, sd = mean_std(alone.values()) if alone else (None, None)
    rows = [_distilled_row(t, a, accs, alone, seeds, m, teacher) for (t, a), accs in sorted(configs.items())]
    out = {
        "status": "finished",
        "teacher": {k: teacher.get(k) for k in ("test_acc", "test_loss", "params", "train_time_s")},
        "student_baseline": {"test_acc_mean": m, "test_acc_std": sd},
        "student_distill": rows,
        "students": _per_student(results, teacher),
        "seeds": seeds,
    }
    if len(rows) == 1:
        out["paired"], out["gap_closed"] = rows[0]["paired"], rows[0]["gap_closed"]
    out.update(test_examples=len(teacher["test_preds"]), test_subset=cfg.data.test_subset)
    if lost:
        out["failed_children"] = {n: {k: r.get(k) for k in ("status", "error", "epochs_run")} for n, r in lost.items()}
    errors = round((1 - teacher["test_acc"]) * len(teacher["test_preds"]))
    text = [
        f"Teacher: test acc {teacher['test_acc']:.4f} ({errors} test errors)",
        "",
        f"| Students | T | alpha | Test acc{TEST_MARK * bool(cfg.data.test_subset)}"
        f"{' mean ± std' if len(alone) > 1 else ''} | Distilled - alone (paired) | Gap closed | Seeds |",
        "|---|---|---|---|---|---|---|",
        f"| alone | - | - | {_pm(m, sd, len(seeds))} | - | - | {len(seeds)} |",
    ]
    for r in rows:
        gap = "-" if r["gap_closed"] is None else f"{r['gap_closed']:.1%}"
        acc = format_mean_std(r["test_acc_mean"], r["test_acc_std"], r["seeds"])
        text.append(
            f"| distilled | {r['temperature']:g} | {r['alpha']:g} | {acc} | "
            f"{format_paired(r['paired']) if r['paired'] else '-'} | {gap} | {r['seeds']} |"
        )
    text += _mcnemar_lines(results, rows) + _lost_lines(lost)
    if configs and m is not None:  # else nothing to compare: no distilled student, or none alone, finished
        _multi_figure(cfg, run_dir, configs, rows, (m, sd), teacher, len(seeds))
    write_report(run_dir, out, text, test_subset=cfg.data.test_subset)
    return out


def _lost_lines(lost):
    """results.md's lines on the students that diverged or failed (none: no lines)."""
    if not lost:
        return []
    why = {n: " ".join(str(r.get("error")).split())[:200] for n, r in lost.items()}
    return [
        "",
        *(f"{n}: {r.get('status')} ({why[n]})" for n, r in lost.items()),
        f"{len(lost)} students diverged or failed and are left out; a re-run keeps them as they are, "
        "--retry_failed trains them again.",
    ]


def _per_student(results, teacher):
    """Each student's figures, and how often it agrees with the teacher on the test set."""
    keys = ("test_acc", "test_loss", "params", "train_time_s")
    return {
        n: {
            "seed": r["child"].seed,
            **{k: r[k] for k in keys},
            "agreement_with_teacher": (r["test_preds"] == teacher["test_preds"]).float().mean().item(),
        }
        for n, r in results.items()
        if n != "teacher"
    }


def _distilled_row(t, a, accs, alone, seeds, alone_mean, teacher):
    pm, ps = mean_std(accs.values())
    both = [s for s in seeds if s in accs]  # the seeds both students finished
    p = paired([accs[s] for s in both], [alone[s] for s in both]) if both else None
    # From the table's means, so that a reader can recompute it.
    gap = None if alone_mean is None else gap_closed(pm, alone_mean, teacher["test_acc"])
    row = {"temperature": t, "alpha": a, "test_acc_mean": pm, "test_acc_std": ps, "paired": p, "gap_closed": gap}
    return {**row, "seeds": len(accs)}


def _multi_figure(cfg, run_dir, configs, rows, alone, teacher, n_seeds):
    """comparison.png: the T x alpha grid's mean test accuracy, or teacher / alone / distilled bars."""
    m, sd = alone
    if cfg.distill.study:
        ts, als = sorted({t for t, _ in configs}), sorted({a for _, a in configs})
        grid = [[configs.get((t, a)) and mean_std(configs[(t, a)].values())[0] for a in als] for t in ts]
        plot_heatmap(
            grid,
            [f"T={t:g}" for t in ts],
            [f"alpha={a:g}" for a in als],
            run_dir / "comparison.png",
            f"{run_dir.name}: distilled student, {'mean ' * (n_seeds > 1)}test accuracy (alone: {m:.4f})",
            "test accuracy",
        )
    else:
        plot_bars(
            ["teacher", "alone", "distilled"],
            [teacher["test_acc"], m, rows[0]["test_acc_mean"]],
            ["", f"± {sd:.4f}", f"± {rows[0]['test_acc_std']:.4f}"] if n_seeds > 1 else ["", "", ""],
            run_dir / "comparison.png",
            title=f"{run_dir.name}: test accuracy (students: "
            f"{f'mean over {n_seeds} seeds' if n_seeds > 1 else 'one seed'})",
        )


def _pm(m, sd, n):
    return "-" if m is None else format_mean_std(m, sd, n)
