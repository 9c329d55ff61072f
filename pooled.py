"""Several exercise2 `--seeds` folders, one teacher each, pooled into one report: the spread over teachers as well
as over students, which one folder (one teacher) cannot show.

Seed-level intervals are Student-t over the independent units: the teachers (n = folders) and the students
(n = all pairs; students of one teacher share it, so that interval counts the students' variation, not the
teachers'); the difference distilled - alone is also given over the per-teacher means (n = folders), the honest one
when teachers differ. Example-level statistics resample the shared test set: McNemar's exact test pooled over every
pair, and paired bootstrap intervals of the mean accuracy difference and of the gap closed. Folders that would
count one net twice (the same folder, teacher or student seed) or that differ in anything but the teacher and the
seeds are refused."""

from pathlib import Path

import numpy as np

from errors import CheckpointError
from files import read_json
from inputs import fingerprint
from run import GIVEN_TEACHER_PREDICTIONS, PREDICTIONS, load_predictions
from stats import bootstrap_diff, bootstrap_gap_closed, format_mcnemar, mcnemar, mean_ci, paired

KINDS = ("student_baseline", "student_distill")
# What may differ between pooled folders: the teacher, the seeds, and where things were.
FREE = {
    "distill.seeds",
    "distill.teacher_ckpt",
    "distill.teacher_sha256",
    "distill.teacher_dir",
    "distill.baseline_dir",
    "distill.teacher_logits",
    "train.seed",
    "data.data_root",
    "data.norm",
    "data.num_workers",
    "output",
}


def _teacher_predictions(folder, config):
    """The teacher's test predictions: trained here (teacher/), given and tested here, or, for a folder made before
    exercise2 saved a given teacher's, those of the run folder of --teacher_ckpt if it is still that file."""
    for path in (folder / "teacher" / PREDICTIONS, folder / GIVEN_TEACHER_PREDICTIONS):
        if path.is_file():
            return load_predictions(path)
    ckpt = Path(config["distill"].get("teacher_ckpt") or "")
    where = {"best.pt": ckpt.parent, "teacher.pth": ckpt.parent / "teacher"}.get(ckpt.name)
    if where is None or not (where / PREDICTIONS).is_file():
        raise CheckpointError(f"{folder} holds no test predictions of its teacher (made before lab1 saved them)")
    digest = config["distill"].get("teacher_sha256")
    if digest and fingerprint(ckpt) != digest:
        raise CheckpointError(f"{ckpt} is no longer the teacher {folder} was distilled from (its sha256 differs)")
    return load_predictions(where / PREDICTIONS)


def read_folder(folder):
    """One finished exercise2 --seeds folder with one (T, alpha): its config, test examples and per-example results."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not an exercise2 folder (no config.json)")
    config = read_json(folder / "config.json", "config")
    if not (folder / "summary.json").exists():
        raise CheckpointError(f"{folder} has not finished (no summary.json: still running, or stopped)")
    summary = read_json(folder / "summary.json", "summary")
    if not isinstance(config, dict) or config.get("kind") != "exercise2" or not isinstance(summary, dict):
        raise CheckpointError(f"{folder} is not an exercise2 folder")
    students, rows = summary.get("students"), summary.get("student_distill")
    if summary.get("status") != "finished" or not isinstance(students, dict) or not isinstance(rows, list):
        raise CheckpointError(f"{folder} is not a finished exercise2 --seeds folder")
    if len(rows) != 1:
        raise CheckpointError(f"{folder} holds {len(rows)} (T, alpha) settings; pooling needs one per folder")
    index, label, teacher = _teacher_predictions(folder, config)
    out = {"folder": folder, "config": config, "index": index, "label": label, "teacher": teacher}
    out.update({k: {} for k in KINDS})
    for name, s in students.items():
        kind = next((k for k in KINDS if name.startswith(k)), None)
        if kind is None or not isinstance(s, dict) or type(s.get("seed")) is not int:
            raise CheckpointError(f"{folder}/summary.json: student {name!r} is not one of exercise2's")
        idx, lab, out[kind][s["seed"]] = load_predictions(folder / name / PREDICTIONS)
        if not (np.array_equal(idx, index) and np.array_equal(lab, label)):
            raise CheckpointError(f"{folder / name} was tested on other examples than its teacher")
    return out


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and key not in FREE else {key: v})
    return out


def _check_poolable(runs):
    """One line for the first reason these folders cannot be pooled, else nothing."""
    folders = [r["folder"].resolve() for r in runs]
    if len(set(folders)) < len(folders):
        raise CheckpointError("a folder is given twice: its nets would count as independent ones")
    first = runs[0]
    for r in runs[1:]:
        if not (np.array_equal(r["index"], first["index"]) and np.array_equal(r["label"], first["label"])):
            raise CheckpointError(f"{first['folder']} and {r['folder']} were tested on different test examples")
        a, b = _flat(first["config"]), _flat(r["config"])
        differ = sorted(k for k in a.keys() | b.keys() if k not in FREE and a.get(k) != b.get(k))
        if differ:
            k = differ[0]
            raise CheckpointError(
                f"{first['folder']} and {r['folder']} differ in {k} ({a.get(k)!r} vs {b.get(k)!r}); pooled folders "
                "may differ only in the teacher and the seeds"
            )
    teachers = [r["config"]["distill"].get("teacher_sha256") or r["teacher"].tobytes() for r in runs]
    if len(set(teachers)) < len(teachers):
        raise CheckpointError("two folders have the same teacher: pooling needs one teacher per folder")
    seen = {}
    for r in runs:
        for seed in set(r["student_baseline"]) | set(r["student_distill"]):
            if seed in seen:
                raise CheckpointError(
                    f"student seed {seed} is in {seen[seed]} and {r['folder']}: its student alone is the same net in "
                    "both; give each teacher its own --seeds"
                )
            seen[seed] = r["folder"]


def pool(folders):
    """The pooled figures (a dict) and results.md-style lines, from exercise2 --seeds folders."""
    runs = [read_folder(f) for f in folders]
    _check_poolable(runs)
    pairs = [(r, s) for r in runs for s in sorted(set(r["student_distill"]) & set(r["student_baseline"]))]
    unpaired = [
        f"{r['folder']}: seed {s} has no {'distilled' if s in r['student_baseline'] else 'alone'} student"
        for r in runs
        for s in sorted(set(r["student_distill"]) ^ set(r["student_baseline"]))
    ]
    if not pairs:
        raise CheckpointError("no seed with both a distilled and an alone student")
    n = len(runs[0]["index"])
    errors = lambda c: int(n - np.count_nonzero(c))  # noqa: E731
    acc = lambda c: float(np.count_nonzero(c)) / n  # noqa: E731
    teachers = np.stack([r["teacher"] for r in runs])
    distilled = np.stack([r["student_distill"][s] for r, s in pairs])
    alone = np.stack([r["student_baseline"][s] for r, s in pairs])
    paired_runs = [r for r in runs if any(q is r for q, _ in pairs)]
    per_teacher = [
        np.mean([acc(r["student_distill"][s]) - acc(r["student_baseline"][s]) for q, s in pairs if q is r])
        for r in paired_runs
    ]
    out = {
        "folders": [str(r["folder"]) for r in runs],
        "test_examples": n,
        "teacher_errors": mean_ci([errors(c) for c in teachers]),
        "alone_errors": mean_ci([errors(c) for c in alone]),
        "distilled_errors": mean_ci([errors(c) for c in distilled]),
        "distilled_minus_alone_over_pairs": paired([acc(c) for c in distilled], [acc(c) for c in alone]),
        "distilled_minus_alone_over_teachers": mean_ci(per_teacher),
        "mcnemar_pooled": mcnemar(distilled, alone),
        "bootstrap_vs_alone": bootstrap_diff(distilled, alone),
        "bootstrap_gap_closed": bootstrap_gap_closed(distilled, alone, teachers),
        "unpaired": unpaired,
    }
    return out, _lines(runs, pairs, out, errors, len(paired_runs))


def _ci(r, digits=1, scale=1.0):
    lo, hi = r["ci95"]
    m, sd = r["mean"] * scale, r["std"] * scale
    spread = f"{m:.{digits}f} ± {sd:.{digits}f}" if r["seeds"] > 1 else f"{m:.{digits}f}"
    return spread + ("" if lo is None else f" ({lo * scale:.{digits}f} .. {hi * scale:.{digits}f})")


def _count(n, what):
    return f"{n} {what}{'s' * (n != 1)}"


def _lines(runs, pairs, out, errors, n_paired_teachers):
    d = runs[0]["config"]["distill"]
    lines = [
        f"T = {d['temperature']:g}, alpha = {d['alpha']:g}; {out['test_examples']:,} test examples",
        "",
        "| Folder | Teacher errors | Seed | Alone errors | Distilled errors | McNemar distilled vs alone |",
        "|---|---|---|---|---|---|",
    ]
    for r, s in pairs:
        dist, alone = r["student_distill"][s], r["student_baseline"][s]
        name = str(r["folder"]).replace("|", "\\|")
        lines.append(
            f"| {name} | {errors(r['teacher'])} | {s} | {errors(alone)} | {errors(dist)} | "
            f"{format_mcnemar(mcnemar(dist, alone), 'distilled', 'alone')} |"
        )
    boot, gap = out["bootstrap_vs_alone"], out["bootstrap_gap_closed"]
    gap_ci = "undefined" if gap["ci95"][0] is None else f"{gap['ci95'][0]:.1%} .. {gap['ci95'][1]:.1%}"
    gap_value = "undefined" if gap["value"] is None else f"{gap['value']:.1%}"
    teachers, students = _count(len(runs), "teacher"), _count(len(pairs), "student")
    return lines + [
        "",
        "| Quantity | Mean ± std (95% t-interval) | n |",
        "|---|---|---|",
        f"| teacher test errors | {_ci(out['teacher_errors'])} | {teachers} |",
        f"| alone test errors | {_ci(out['alone_errors'])} | {students} |",
        f"| distilled test errors | {_ci(out['distilled_errors'])} | {students} |",
        f"| distilled - alone, points of test acc, over pairs | "
        f"{_ci(out['distilled_minus_alone_over_pairs'], 3, 100)} | {_count(len(pairs), 'pair')} |",
        f"| distilled - alone, points of test acc, over teachers' means | "
        f"{_ci(out['distilled_minus_alone_over_teachers'], 3, 100)} | {_count(n_paired_teachers, 'teacher')} |",
        "",
        f"Example by example, pooled over the {_count(len(pairs), 'pair')}: "
        f"{format_mcnemar(out['mcnemar_pooled'], 'distilled', 'alone')}; mean test acc distilled - alone "
        f"{boot['mean'] * 100:+.3f} points (paired bootstrap over the test examples, 95% CI "
        f"{boot['ci95'][0] * 100:+.3f} .. {boot['ci95'][1] * 100:+.3f}); gap closed (mean accuracies; teacher: the "
        f"mean of {teachers}) {gap_value}, paired bootstrap 95% CI {gap_ci}",
        *(["", "Left out, without a partner: " + "; ".join(out["unpaired"])] if out["unpaired"] else []),
    ]
