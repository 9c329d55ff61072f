"""Several exercise2 `--seeds` folders, one teacher each, pooled into one report: the spread over teachers as well
as over students, which one folder (one teacher) cannot show.

Seed-level intervals are Student-t over the independent units: the teachers (n = folders) and the students
(n = all pairs; students of one teacher share it, so that interval counts the students' variation, not the
teachers'); the difference distilled - alone is also given over the per-teacher means (n = folders), the honest one
when teachers differ. Example-level statistics resample the shared test set: McNemar's exact test pooled over every
pair, and paired bootstrap intervals of the mean accuracy difference and of the gap closed."""

from pathlib import Path

import numpy as np

from errors import CheckpointError
from files import read_json
from run import PREDICTIONS
from stats import bootstrap_diff, bootstrap_gap_closed, format_mcnemar, mcnemar, mean_ci, paired

KINDS = ("student_baseline", "student_distill")


def _predictions(folder):
    """(index, correct) of a run folder's test_predictions.npy, or a one-line CheckpointError."""
    path = folder / PREDICTIONS
    try:
        rows = np.load(path, allow_pickle=False)
        return rows["index"], rows["label"] == rows["pred"]
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist (runs made before lab1 saved test predictions)") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable or damaged ({type(e).__name__})") from None


def read_folder(folder):
    """{"teacher": correct, "student_baseline": {seed: correct}, "student_distill": {seed: correct}, "index"}
    of one finished exercise2 --seeds folder with one (T, alpha)."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json", "summary")
    students = summary.get("students") if isinstance(summary, dict) else None
    rows = summary.get("student_distill") if isinstance(summary, dict) else None
    if summary.get("status") != "finished" or not isinstance(students, dict) or not isinstance(rows, list):
        raise CheckpointError(f"{folder} is not a finished exercise2 --seeds folder")
    if len(rows) != 1:
        raise CheckpointError(f"{folder} holds {len(rows)} (T, alpha) settings; pooling needs one per folder")
    index, teacher = _predictions(folder / "teacher")
    out = {"folder": folder, "index": index, "teacher": teacher, **{k: {} for k in KINDS}}
    for name, s in students.items():
        kind = next((k for k in KINDS if name.startswith(k + "_seed")), None)
        if kind is None or not isinstance(s, dict) or not isinstance(s.get("seed"), int):
            raise CheckpointError(f"{folder}/summary.json: student {name!r} is not one of exercise2's")
        idx, out[kind][s["seed"]] = _predictions(folder / name)
        if not np.array_equal(idx, index):
            raise CheckpointError(f"{folder / name} was tested on other examples than its teacher")
    return out


def pool(folders):
    """The pooled figures (a dict) and results.md-style lines, from exercise2 --seeds folders."""
    runs = [read_folder(f) for f in folders]
    if any(not np.array_equal(r["index"], runs[0]["index"]) for r in runs):
        raise CheckpointError("the folders were tested on different test examples; pooling needs the same ones")
    pairs = [(r, s) for r in runs for s in sorted(set(r["student_distill"]) & set(r["student_baseline"]))]
    if not pairs:
        raise CheckpointError("no seed with both a distilled and an alone student")
    n = len(runs[0]["index"])
    errors = lambda c: int(n - np.count_nonzero(c))  # noqa: E731
    acc = lambda c: float(np.count_nonzero(c)) / n  # noqa: E731
    teachers = np.stack([r["teacher"] for r in runs])
    distilled = np.stack([r["student_distill"][s] for r, s in pairs])
    alone = np.stack([r["student_baseline"][s] for r, s in pairs])
    diff_teacher_means = [
        np.mean([acc(r["student_distill"][s]) - acc(r["student_baseline"][s]) for q, s in pairs if q is r])
        for r in runs
        if any(q is r for q, _ in pairs)
    ]
    out = {
        "folders": [str(r["folder"]) for r in runs],
        "test_examples": n,
        "teacher_errors": mean_ci([errors(c) for c in teachers]),
        "alone_errors": mean_ci([errors(c) for c in alone]),
        "distilled_errors": mean_ci([errors(c) for c in distilled]),
        "distilled_minus_alone_over_pairs": paired([acc(c) for c in distilled], [acc(c) for c in alone]),
        "distilled_minus_alone_over_teachers": mean_ci(diff_teacher_means),
        "mcnemar_pooled": mcnemar(distilled, alone),
        "bootstrap_vs_alone": bootstrap_diff(distilled, alone),
        "bootstrap_gap_closed": bootstrap_gap_closed(distilled, alone, teachers),
    }
    return out, _lines(runs, pairs, out, errors)


def _ci(r, digits=1, scale=1.0):
    lo, hi = r["ci95"]
    m, sd = r["mean"] * scale, r["std"] * scale
    spread = f"{m:.{digits}f} ± {sd:.{digits}f}" if r["seeds"] > 1 else f"{m:.{digits}f}"
    return spread + ("" if lo is None else f" ({lo * scale:.{digits}f} .. {hi * scale:.{digits}f})")


def _lines(runs, pairs, out, errors):
    lines = [
        "| Folder | Teacher errors | Seed | Alone errors | Distilled errors | McNemar distilled vs alone |",
        "|---|---|---|---|---|---|",
    ]
    for r, s in pairs:
        d, a = r["student_distill"][s], r["student_baseline"][s]
        lines.append(
            f"| {r['folder'].name} | {errors(r['teacher'])} | {s} | {errors(a)} | {errors(d)} | "
            f"{format_mcnemar(mcnemar(d, a), 'distilled', 'alone')} |"
        )
    boot, gap = out["bootstrap_vs_alone"], out["bootstrap_gap_closed"]
    gap_ci = "undefined" if gap["ci95"][0] is None else f"{gap['ci95'][0]:.1%} .. {gap['ci95'][1]:.1%}"
    gap_value = "undefined" if gap["value"] is None else f"{gap['value']:.1%}"
    n_teachers = len(runs)
    return lines + [
        "",
        "| Quantity | Mean ± std (95% t-interval) | n |",
        "|---|---|---|",
        f"| teacher test errors | {_ci(out['teacher_errors'])} | {n_teachers} teachers |",
        f"| alone test errors | {_ci(out['alone_errors'])} | {len(pairs)} students |",
        f"| distilled test errors | {_ci(out['distilled_errors'])} | {len(pairs)} students |",
        f"| distilled - alone, points of test acc, over pairs | "
        f"{_ci(out['distilled_minus_alone_over_pairs'], 3, 100)} | {len(pairs)} pairs |",
        f"| distilled - alone, points of test acc, over teachers' means | "
        f"{_ci(out['distilled_minus_alone_over_teachers'], 3, 100)} | {n_teachers} teachers |",
        "",
        f"Example by example, pooled over the {len(pairs)} pairs: "
        f"{format_mcnemar(out['mcnemar_pooled'], 'distilled', 'alone')}; mean test acc distilled - alone "
        f"{boot['mean'] * 100:+.3f} points (paired bootstrap over the test examples, 95% CI "
        f"{boot['ci95'][0] * 100:+.3f} .. {boot['ci95'][1] * 100:+.3f}); gap closed (mean accuracies; teacher: the "
        f"mean of {n_teachers}) {gap_value}, paired bootstrap 95% CI {gap_ci}",
    ]
