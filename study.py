"""Studies: many independent trainings (children) in one folder, shared by any number of workers.

    python exercise1.py --study mlp_depth --depths 2 4 8 16 32 --seeds 0 1 2 --epochs 10
    python exercise1.py --study mlp_depth --seeds 0 1 2 --workers 2       # two local worker processes
    python exercise1.py --seeds 0 1 2 --depth 8                           # one configuration, three seeds
    python exercise1.py --k_folds 5                                       # the folds are the children

Each child is a run folder inside the study folder, exactly as a single run leaves it. A worker claims a
child by taking the lock of its folder (fcntl.lockf: the operating system releases it when the worker dies,
also over NFS where the server supports locks), trains or resumes it, and moves on; so the same command
started N times, on one machine or on many that share the folder, splits the study, and a child left by a
dead worker is resumed from its last.pt by the next worker that finds it free. Whoever sees every child
finished writes the report (summary.json, results.md, comparison.png, grads.png), once.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace

from config import differences
from errors import CheckpointError, UsageError
from figures import plot_layer_grads, plot_study
from files import RunLock, read_json, read_jsonl, write_json, write_report
from flags import Distinct, count, flag, from_dict, nonneg_int, pos_processes
from models import PRESETS, ModelConfig
from rundir import finished
from saver import duration
from stats import format_paired, mean_std, number, paired
from wandb_reports import study_to_wandb

STUDIES = ("mlp_depth", "cnn_depth")
DEFAULT_DEPTHS = {"mlp_depth": (2, 4, 8, 16, 32), "cnn_depth": (20, 32, 44, 56)}


# The model flags a study sets itself (cnn_depth: He et al.'s presets, as published).
MODEL_FLAGS_SET = {
    "mlp_depth": {"depth", "hidden_sizes", "skips", "residual"},
    "cnn_depth": {f.name for f in fields(ModelConfig)} - {"name"},
}


@dataclass(frozen=True)
class StudyConfig:
    study: str = flag(
        "",
        "mlp_depth: FlexibleMLP plain vs residual over --depths (MNIST); cnn_depth: He et al. "
        "plain vs ResNet over --depths (CIFAR-10). Leaves SAVE_DIR/<study>/",
        choices=STUDIES,
    )
    depths: tuple = flag((), "depths of the study", type=count, nargs="+", action=Distinct)
    seeds: tuple = flag(
        (),
        "train every configuration once per seed and report mean ± std (also without --study)",
        type=nonneg_int,
        nargs="+",
        action=Distinct,
    )
    workers: int = flag(
        1,
        "start N local worker processes that share the study (one child each at a time; CPU "
        "threads split between them, GPUs assigned round-robin)",
        type=pos_processes,
    )
    report: bool = flag(False, "rebuild the study's report from its folder (after, or during, the study)")


@dataclass(frozen=True)
class Child:
    name: str  # folder name inside the study
    kind: str  # "plain" / "residual" / the model's name (seeds only) / "fold" / an exercise2 phase
    cfg: object  # the child's RunConfig (or exercise2's ExperimentConfig)
    depth: int | None = None  # the model's depth, where the study varies or reports it
    seed: int | None = None  # the training seed
    fold: int | None = None  # the fold's number (1..K) of a k-fold run


def children(study, base, depths, seeds):
    """The child runs: a depth study, one configuration per seed, or the folds of a k-fold run."""
    if base.data.k_folds:
        return [
            Child(f"fold_{i}", "fold", replace(base, data=replace(base.data, fold=i)), seed=base.train.seed, fold=i)
            for i in range(1, base.data.k_folds + 1)
        ]
    if not study:
        m = base.model
        depth = len(m.mlp_hidden_sizes()) if m.name == "FlexibleMLP" else sum(m.layers)
        return [Child(f"seed{s}", m.name, replace(base, train=replace(base.train, seed=s)), depth, s) for s in seeds]
    out = []
    for kind in ("plain", "residual"):
        for depth in depths:
            if study == "mlp_depth":
                model = replace(
                    base.model, name="FlexibleMLP", depth=depth, hidden_sizes=(), skips=(), residual=kind == "residual"
                )
            else:
                name = f"{'resnet' if kind == 'residual' else 'plain'}{depth}"
                if name not in PRESETS:
                    raise UsageError(
                        f"--depths {depth}: cnn_depth takes He et al. depths 6n+2 from "
                        f"{sorted({int(n[5:]) for n in PRESETS if n.startswith('plain')})}"
                    )
                model = ModelConfig(name=name, norm="batch")
            out += [
                Child(
                    f"{kind}{depth}_seed{s}",
                    kind,
                    replace(base, model=model, train=replace(base.train, seed=s)),
                    depth,
                    s,
                )
                for s in seeds
            ]
    return out


def work(kids, study_dir, train_child, workers=1, write_config=True):
    """One worker: claim, train and release children until every child is finished (waiting for the ones that
    other workers hold). train_child(child, run_dir) trains (or resumes) one child."""
    t0, done_here, total = time.perf_counter(), 0, len(kids)
    for child in kids:
        if finished(study_dir / child.name):
            print(f"{child.name}: finished earlier, skipped")
    while True:
        pending = [c for c in kids if not finished(study_dir / c.name)]
        if not pending:
            return
        claimed = False
        for child in pending:
            run_dir = study_dir / child.name
            run_dir.mkdir(exist_ok=True)
            lock = RunLock(run_dir)
            if not lock.held:
                continue
            try:
                if finished(run_dir):
                    continue
                claimed = True
                if write_config and not (run_dir / "config.json").exists():
                    write_json(run_dir / "config.json", child.cfg.to_dict())
                print(f"== {child.name} (pid {os.getpid()})", flush=True)
                train_child(child, run_dir)
            finally:
                lock.release()
            done_here += 1
            n_done = sum(finished(study_dir / c.name) for c in kids)
            per_child = (time.perf_counter() - t0) / done_here
            left = f"; about {duration(per_child * (total - n_done) / workers)} left" if n_done < total else ""
            print(f"[{n_done}/{total}] {child.name} finished{left}", flush=True)
        if not claimed:
            time.sleep(1.0)  # every pending child is held by another worker: wait for it to finish or die


SPAWNED = "LAB1_STUDY_WORKER"  # set in the environment of the workers spawn_workers starts


def spawn_workers(n, study_dir):
    """n worker processes on study_dir (`--resume STUDY_DIR`); CPU threads split between them, worker i on GPU
    i mod the GPU count. Returns when all have ended; a failed worker is one line (its children stay to resume)."""
    import torch

    gpus, threads = torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i in range(n):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", SPAWNED: "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen([sys.executable, sys.argv[0], "--resume", str(study_dir)], env=env))
    try:
        codes = [p.wait() for p in procs]
    except BaseException:  # Ctrl-C / SIGTERM: the workers stop tidily too, each saving its child
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    if any(codes):
        raise UsageError(
            f"{sum(map(bool, codes))} of {n} workers failed (exit codes {codes}); the study continues "
            f"with: python {sys.argv[0]} --resume {study_dir}"
        )


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
    rows = aggregate(kids, results)
    diff = residual_minus_plain(kids, results)
    lines = [
        "| Model | Depth | Params | Test acc mean ± std | Best val acc mean ± std | Seeds | Train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = (
            f"{r['best_val_acc_mean']:.4f} ± {r['best_val_acc_std']:.4f}" if r["best_val_acc_mean"] is not None else "-"
        )
        lines.append(
            f"| {r['model']} | {r['depth']} | {r['params']:,} | {r['test_acc_mean']:.4f} ± "
            f"{r['test_acc_std']:.4f} | {val} | {r['seeds']} | {r['train_time_s_mean']:.1f} |"
        )
    if diff:
        lines += ["", "| Depth | Residual - plain, test acc (paired over seeds) |", "|---|---|"]
        lines += [f"| {d} | {format_paired(p)} |" for d, p in diff.items()]
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
        title=f"vanishing gradients: deepest net of each kind (epoch 1, seed {seed})",
    )
    write_report(
        study_dir, {"status": "finished", "study": title, "configurations": rows, "residual_minus_plain": diff}, lines
    )
    best = max(rows, key=lambda r: r["test_acc_mean"])
    return f"best {best['model']} {best['depth']}: test acc {best['test_acc_mean']:.4f}"


def check_plan(plan):
    """A study's config.json: its study, depths and seeds as the flags would take them, and at least one child."""
    sc = from_dict(StudyConfig, {k: plan[k] for k in ("study", "depths", "seeds")})
    if not sc.seeds or bool(sc.study) != bool(sc.depths):
        raise ValueError("a study needs seeds, and depths exactly when it names a study")


# What may differ between a child's config.json and its study's: where files live, and the epochs --epochs raises.
LOCAL = ("train.epochs", "output", "data.data_root", "data.num_workers")


def check_children(kids, study_dir):
    """Every child folder holds the child its study's config.json makes (not one replaced by hand or --overwrite)."""
    for c in kids:
        if (study_dir / c.name / "config.json").exists():
            differ = differences(
                read_json(study_dir / c.name / "config.json", "child config"), c.cfg.to_dict(), skip=LOCAL
            )
            if differ:
                raise CheckpointError(
                    f"{study_dir / c.name} is not the child {study_dir / 'config.json'} makes "
                    f"({differ[0]} differs): the study or the child was edited or replaced"
                )


def run(kids, study_dir, title, train_child, workers=1, rebuild=False):
    """Work on the study until it is finished, then report once (or again, with rebuild)."""
    check_children(kids, study_dir)
    if not rebuild:
        work(kids, study_dir, train_child, workers)
    if not all(finished(study_dir / c.name) for c in kids):
        left = [c.name for c in kids if not finished(study_dir / c.name)]
        raise UsageError(
            f"{study_dir}: {len(left)} of {len(kids)} children are not finished yet ({', '.join(left[:4])}"
            f"{' ...' if len(left) > 4 else ''}); the report needs all of them"
        )
    lock = RunLock(study_dir)
    try:
        if not lock.held:  # another worker is writing the report right now
            return "report written by another worker"
        if rebuild or not finished(study_dir):
            return study_to_wandb(report(study_dir, title, kids), study_dir, kids)
        if not os.environ.get(SPAWNED):  # a worker of --workers N: the one that wrote the report printed it
            print(
                f"{study_dir} was finished earlier:\n"
                + ((study_dir / "results.md").read_text() if (study_dir / "results.md").exists() else "")
            )
        return json.dumps(read_json(study_dir / "summary.json").get("val_acc_mean", ""))
    finally:
        lock.release()
