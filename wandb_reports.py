"""The summary runs in W&B: after a study's, an exercise2 experiment's or a transfer run's report, one run in the
group of its parts (job type `summary`) holds the results as tables of numbers, the report's figures and the
paired statistics; and the transfer modes that train no network (linear, svm) as runs of their own.

Tables hold numbers as numbers and plain column names, so W&B sorts, filters and charts them; None where a value
does not exist (a fold's test accuracy, a baseline's temperature).
"""

import functools
import re
from pathlib import Path

from config import RunConfig
from errors import warn
from files import read_json
from tracking import finish_logger, flat_config, group_of, open_logger, run_summary, transfer_config
from wandb_log import why

PAIRED = ["paired_mean", "paired_std", "paired_ci95_low", "paired_ci95_high"]


def _paired(p):
    ci = (p or {}).get("ci95") or [None, None]
    return [None, None, *ci] if p is None else [p["mean"], p["std"], *ci]


def _table(columns, rows):
    """Columns without any value are left out."""
    keep = [i for i in range(len(columns)) if any(r[i] is not None for r in rows)]
    return [columns[i] for i in keep], [[r[i] for i in keep] for r in rows]


def _names(prefix, d):
    """{prefix/key: number} of a dict's numbers, test results named like train/ and val/ (test_acc_mean is
    test/acc_mean)."""
    return {f"{prefix}/{re.sub('^test_', 'test/', k)}": v for k, v in d.items() if isinstance(v, (int, float))}


def quiet(fn):
    """A summary run's failure (a report file it cannot read back) is one warning line: the report is written."""

    @functools.wraps(fn)
    def run(*args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:
            warn(f"W&B summary run not logged ({why(e)})")

    return run


def summary_run(cfg, folder, config, tables, figures, summary):
    """One `summary` run in the folder's group: tables {key: (columns, rows)}, figures (file names), summary."""
    folder = Path(folder)
    logger = open_logger(
        cfg, folder, name=f"{folder.name}-summary", config=config, group=group_of(folder), job_type="summary"
    )
    if logger:
        for key, (columns, rows) in tables.items():
            if rows:
                logger.log_table(key, *_table(columns, rows))
        logger.log_images([folder / f for f in figures])
    finish_logger(logger, summary)


def study_to_wandb(message, study_dir, kids):
    """After a study's report (exercise1 --study, --seeds, --k_folds): its summary run; returns `message`."""
    _study_run(study_dir, kids)
    return message


@quiet
def _study_run(study_dir, kids):
    plan = read_json(study_dir / "config.json", "study config")
    base = RunConfig.from_dict(plan["base"])
    if base.output.wandb == "disabled":
        return
    report = read_json(study_dir / "summary.json", "summary")
    child = {c.name: read_json(study_dir / c.name / "summary.json", "summary") for c in kids}
    cols = ["name", "kind", "depth", "seed", "fold", "test_acc", "test_loss", "best_val_acc", "best_epoch", "params"]
    rows = [[c.name, c.kind, c.depth, c.seed, c.fold, *(child[c.name].get(k) for k in cols[5:])] for c in kids]
    tables, summary = {"children": (cols + ["train_time_s"], [r + [child[r[0]]["train_time_s"]] for r in rows])}, {}
    if "configurations" in report:
        cols = ["model", "depth", "params", "seeds", "test_acc_mean", "test_acc_std", "best_val_acc_mean"]
        cols += ["best_val_acc_std", "train_time_s_mean"]
        tables["results"] = (cols, [[r[k] for k in cols] for r in report["configurations"]])
        for r in report["configurations"]:
            summary.update(_names(f"{r['model']}{r['depth']}", {k: r[k] for k in cols[4:]}))
        diff = report["residual_minus_plain"]
        tables["residual_minus_plain"] = (["depth", *PAIRED], [[int(d), *_paired(p)] for d, p in diff.items()])
        for d, p in diff.items():
            summary.update(dict(zip([f"residual_minus_plain/{d}/{k[7:]}" for k in PAIRED], _paired(p))))
        figures = ("comparison.png", "grads.png")
    else:
        summary = {"val/acc_mean": report["val_acc_mean"], "val/acc_std": report["val_acc_std"]}
        figures = ()
    config = flat_config(base, kind="study", **{k: plan[k] for k in ("study", "depths", "seeds")})
    summary_run(base, study_dir, config, tables, figures, {k: v for k, v in summary.items() if v is not None})


@quiet
def distill_to_wandb(out, results, cfg, run_dir):
    """After exercise2's report (`out`, its summary.json): the experiment's summary run."""
    if cfg.output.wandb == "disabled":
        return
    if "students" in out:
        return _distill_multi(out, results, cfg, run_dir)
    n_test = len(results["teacher"]["test_preds"])
    cols = ["phase", "params", "test_acc", "test_errors", "test_loss", "train_time_s", "best_val_acc", "best_epoch"]
    cols += ["agreement_with_teacher", "gap_closed"]
    rows = [
        [n, *(r.get(k) for k in cols[1:3]), round((1 - r["test_acc"]) * n_test), *(r.get(k) for k in cols[4:])]
        for n, r in out.items()
        if isinstance(r, dict) and "test_acc" in r
    ]
    summary = {k: v for row in rows for k, v in _names(row[0], dict(zip(cols[1:], row[1:]))).items()}
    config = flat_config(cfg)
    summary_run(cfg, run_dir, config, {"results": (cols, rows)}, ("comparison.png", "curves.png"), summary)


def _distill_multi(out, results, cfg, run_dir):
    """--seeds and --study kd_grid: every student, and per (T, alpha) the mean, the paired difference distilled -
    alone over the seeds and the gap closed."""
    cols = ["name", "kind", "seed", "temperature", "alpha", "test_acc", "test_loss", "params", "train_time_s"]
    cols += ["agreement_with_teacher"]
    students = []
    for name, s in out["students"].items():
        child = results[name]["child"]
        d = child.cfg.distill if child.kind == "student_distill" else None
        ta = [d.temperature, d.alpha] if d else [None, None]
        students.append([name, child.kind, s["seed"], *ta, *(s[k] for k in cols[5:])])
    grid = ["temperature", "alpha", "test_acc_mean", "test_acc_std", *PAIRED, "gap_closed"]
    rows = [[*(r[k] for k in grid[:4]), *_paired(r["paired"]), r["gap_closed"]] for r in out["student_distill"]]
    summary = {**_names("teacher", out["teacher"]), **_names("student_baseline", out["student_baseline"])}
    for r in rows:
        summary.update(_names(f"student_distill_T{r[0]:g}_a{r[1]:g}", dict(zip(grid[2:], r[2:]))))
    summary["seeds"] = len(out["seeds"])
    tables = {"students": (cols, students), "results": (grid + ["seeds"], [r + [len(out["seeds"])] for r in rows])}
    summary_run(cfg, run_dir, flat_config(cfg), tables, ("comparison.png",), summary)


@quiet
def transfer_to_wandb(results, run_dir, tc, cfg):
    """After a transfer run's report: its summary run, one row per mode."""
    if cfg.output.wandb == "disabled":
        return
    config = {k: v for k, v in transfer_config(cfg, tc, "summary").items() if k != "phase"}
    cols = ["mode", "test_acc", "test_loss", "best_val_acc", "train_time_s", "params"]
    rows = [[m, *(r.get(k) for k in cols[1:])] for m, r in results.items()]
    summary = {k: v for m, r in results.items() for k, v in _names(m, {c: r.get(c) for c in cols[1:]}).items()}
    summary_run(cfg, run_dir, config, {"results": (cols, rows)}, ("comparison.png",), summary)


@quiet
def classical_to_wandb(cfg, run_dir, logging, result):
    """A transfer mode that trains no network (linear, svm): a run of the group with its result."""
    kw = dict(logging)
    mode = kw["job_type"]
    logger = open_logger(cfg, Path(run_dir) / mode, config=kw.pop("config"), **kw)
    finish_logger(logger, run_summary(result))
