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

import eta
from config import differences
from errors import CheckpointError, UsageError
from eta import duration
from files import RunLock, read_json, write_json
from flags import Distinct, count, flag, from_dict, nonneg_int, pos_processes
from models import PRESETS, ModelConfig
from rundir import finished
from study_report import report

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


def work(kids, study_dir, train_child, workers=1, write_config=True, cost=None):
    """One worker: claim, train and release children until every child is finished (waiting for the ones that
    other workers hold). train_child(child, run_dir) trains (or resumes) one child. cost(child): what training it
    costs (eta.run_cost), which weighs the time-left estimates; by default every child costs the same."""
    cost = dict.fromkeys((c.name for c in kids), 1.0) if cost is None else {c.name: cost(c) for c in kids}
    t0, done_cost, total = time.perf_counter(), 0.0, len(kids)
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
                eta.later(
                    sum(cost[c.name] for c in pending if c is not child and not finished(study_dir / c.name)), workers
                )
                train_child(child, run_dir)
            finally:
                lock.release()
                eta.later(0)
            done_cost += cost[child.name]
            rest = [c.name for c in kids if not finished(study_dir / c.name)]
            seconds = eta.estimate(time.perf_counter() - t0, done_cost, sum(cost[n] for n in rest), workers)
            left = f"; about {duration(seconds)} left" if rest else ""
            print(f"[{total - len(rest)}/{total}] {child.name} finished{left}", flush=True)
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


def run(kids, study_dir, title, train_child, workers=1, rebuild=False, cost=None):
    """Work on the study until it is finished, then report once (or again, with rebuild). cost: as work's."""
    check_children(kids, study_dir)
    if not rebuild:
        work(kids, study_dir, train_child, workers, cost=cost)
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
            return report(study_dir, title, kids)
        if not os.environ.get(SPAWNED):  # a worker of --workers N: the one that wrote the report printed it
            print(
                f"{study_dir} was finished earlier:\n"
                + ((study_dir / "results.md").read_text() if (study_dir / "results.md").exists() else "")
            )
        return json.dumps(read_json(study_dir / "summary.json").get("val_acc_mean", ""))
    finally:
        lock.release()
