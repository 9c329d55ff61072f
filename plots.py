"""Figures and tables of finished runs, redrawn from their metrics.jsonl / summary.json without retraining.

    python plots.py compare runs/A runs/B --metric val_acc --out cmp.png
    python plots.py table runs/A runs/B
    python plots.py pool runs/kd_teacher1 runs/kd_teacher2 runs/kd_teacher3
A study's or exercise2's folder stands for the runs in it.
"""

import argparse
import json
from pathlib import Path

from errors import CheckpointError
from figures import plot_overlay, plottable
from files import TEST_MARK
from pooled import pool


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _read(p, path, lines=False):
    """summary.json (an object) or metrics.jsonl (an object with an epoch a line); a problem is one p.error line."""
    try:
        text = path.read_text()
        records = [json.loads(x) for x in text.splitlines() if x.strip()] if lines else [json.loads(text)]
    except FileNotFoundError:
        p.error(f"{path} not found")
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
        p.error(f"{path} cannot be read ({type(e).__name__}: {str(e)[:100]})")
    if not all(
        isinstance(r, dict) and (not lines or plottable(r.get("epoch")) and 0 <= r["epoch"] <= 1e6) for r in records
    ):
        p.error(f"{path}: each {'line' if lines else 'file'} must be a JSON object{' with an epoch' * lines}")
    return records if lines else records[0]


def _runs(folders, filename, whole):
    """[(label, folder)]: each folder, or where whole(folder) is false (a study's or exercise2's folder), the run
    folders in it that hold `filename`."""
    out = []
    for r in map(Path, folders):
        subs = [] if not r.is_dir() or whole(r) else sorted(d for d in r.iterdir() if (d / filename).is_file())
        out += [(f"{r.name}/{d.name}", d) for d in subs] or [(r.name, r)]
    return out


def main(argv=None):
    p = _Parser(prog="plots.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="overlay one metric of several runs")
    c.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    c.add_argument("--metric", default="val_acc", help="metrics.jsonl key to plot (default: val_acc)")
    c.add_argument("--out", default="compare.png", help="output image (default: compare.png)")
    t = sub.add_parser("table", help="print a Markdown table of the runs' summary.json")
    t.add_argument("runs", nargs="+", help="run folders (each with summary.json)")
    o = sub.add_parser(
        "pool",
        help="pool exercise2 --seeds folders of different teachers: spread over teachers and students, McNemar and "
        "bootstrap intervals over the shared test set (pooled.py)",
    )
    o.add_argument("runs", nargs="+", help="exercise2 --seeds folders, one teacher and one (T, alpha) each")
    args = p.parse_args(argv)
    {"compare": _compare, "table": _table, "pool": _pool}[args.cmd](
        args, {"compare": c, "table": t, "pool": o}[args.cmd]
    )


def _pool(args, p):
    try:
        print("\n".join(pool(args.runs)[1]))
    except CheckpointError as e:
        p.error(str(e))


def _compare(args, c):
    curves = {
        name: _read(c, r / "metrics.jsonl", lines=True)
        for name, r in _runs(args.runs, "metrics.jsonl", lambda r: (r / "metrics.jsonl").exists())
    }
    numeric = sorted({k for h in curves.values() for r in h for k, v in r.items() if plottable(v)} - {"epoch"})
    if args.metric not in numeric:
        c.error(f"no numeric metric {args.metric!r} in these runs; plottable: {', '.join(numeric) or 'none'}")
    try:
        plot_overlay(curves, args.out, args.metric)
    except (OSError, ValueError) as e:  # ValueError: a file type matplotlib cannot write (e.g. .txt)
        c.error(f"cannot write {args.out} ({type(e).__name__}: {str(e).splitlines()[0]})")
    print(args.out)


def _table(args, t):
    cols = (
        ("params", ","),
        ("best_val_acc", ".4f"),
        ("test_acc", ".4f"),
        ("test_loss", ".4f"),
        ("epochs_run", ""),
        ("train_time_s", ".1f"),
    )
    summaries = {
        name: _read(t, r / "summary.json")
        for name, r in _runs(
            args.runs,
            "summary.json",
            lambda r: (r / "summary.json").is_file() and "test_acc" in _read(t, r / "summary.json"),
        )
    }
    print("| Run | Params | Best val acc | Test acc | Test loss | Epochs | Train time (s) |")
    print("|---|---|---|---|---|---|---|")
    subsets = set()
    for name, s in summaries.items():
        name = name.replace("|", "\\|").replace("\n", " ")  # a folder name must not break the table
        cells = [format(s.get(k), f) if plottable(s.get(k)) else "-" for k, f in cols]
        if plottable(s.get("test_subset")) and s["test_subset"] > 0:  # tested on --test_subset examples: marked
            cells[2] += TEST_MARK
            subsets.add(s["test_subset"])
        print(f"| {name} | " + " | ".join(cells) + " |")
    if subsets:
        sizes = "/".join(f"{n:,}" for n in sorted(subsets))
        print(f"\n{TEST_MARK} on a stratified {sizes}-example subset of the test set (--test_subset)")


if __name__ == "__main__":
    main()
