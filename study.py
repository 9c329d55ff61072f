"""Studies: many independent trainings (children) in one folder, shared by any number of workers.

    python exercise1.py --study mlp_depth --depths 2 4 8 16 32 --seeds 0 1 2 --epochs 10
    python exercise1.py --study mlp_depth --seeds 0 1 2 --workers 2       # two local worker processes
    python exercise1.py --seeds 0 1 2 --depth 8                           # one configuration, three seeds
    python exercise1.py --k_folds 5                                       # the folds are the children

Each child is a run folder inside the study folder, exactly as a single run leaves it. A worker claims a
child by taking the lock of its folder (fcntl.lockf: the operating system releases it when the worker dies,
also over NFS where the server supports locks), trains or resumes it, and moves on; so the same command
started N times, on one machine or on many that share the folder, splits the study, and a child left by a
dead worker is resumed from its last.pt by the next worker that finds it free. With --launcher (launch.py) each
child is assigned to one job instead (LAB1_STUDY_CHILD). A child that diverges or fails has ended too (its
summary.json says so) and the others go on. Whoever sees every child ended writes the report (summary.json,
results.md, comparison.png, grads.png), once.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import eta
from config import StudyConfig, differences
from errors import CheckpointError, DataError, DiskFull, Diverged, UsageError
from eta import duration
from files import RunLock, read_json, read_jsonl, write_json
from flags import from_dict
from models import PRESETS, ModelConfig
from rundir import CHILD, SPAWNED, finished
from study_report import report
from wandb_reports import study_to_wandb


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


ENDED = ("finished", "diverged", "failed")  # a child in one of these states needs no more work


def assigned():
    """The child a launcher's job assigned to this process (not claimed: nobody else is given it), or None."""
    return os.environ.get(CHILD) or None


def ended(run_dir):
    """Whether a child needs no more work: it finished, or it diverged or failed (its summary.json says why).
    rundir.finished() is True for the first only; scheduling uses this, so that a failure is no poison pill."""
    try:
        return read_json(Path(run_dir) / "summary.json").get("status") in ENDED
    except (CheckpointError, AttributeError):  # not there yet, or damaged
        return False


def work(
    kids,
    study_dir,
    train_child,
    workers=1,
    write_config=True,
    isolate=True,
    retry_failed=False,
    launcher=None,
    saved=None,
    cost=None,
):
    """One worker: claim, train and release children until every child has ended (waiting for the ones that
    other workers hold). train_child(child, run_dir, saved) trains (or resumes) one child; saved: its config.json
    as read (check_children) or written here. isolate: a child that diverges or fails is recorded as such and the
    study goes on (else it stops the study, as a single run).
    retry_failed: such children are trained again. launcher(pending, study_dir): runs the pending children
    elsewhere (launch.py) instead; its result is returned (False: submitted, not waited for). cost(child): what
    training it costs (eta.run_cost), which weighs the time-left estimates; by default every child costs the same."""
    done = ended if isolate else finished
    if (name := assigned()) is not None:  # a launcher's job: that child only, no waiting for the others
        kids = [c for c in kids if c.name == name]
        if not kids:
            raise UsageError(f"{CHILD}={name}: {study_dir} has no child of that name")
    saved = dict(saved or {})
    cost = dict.fromkeys((c.name for c in kids), 1.0) if cost is None else {c.name: cost(c) for c in kids}
    t0, done_cost, total = time.perf_counter(), 0.0, len(kids)
    if retry_failed:
        retry(kids, study_dir)
    for child in kids:
        if done(study_dir / child.name):
            status = read_json(study_dir / child.name / "summary.json").get("status")
            again = "" if status == "finished" else " (--retry_failed trains it again)"
            print(f"{child.name}: {status} earlier, skipped{again}")
    if launcher is not None:
        return launcher([c for c in kids if not done(study_dir / c.name)], study_dir)
    while pending := [c for c in kids if not done(study_dir / c.name)]:
        claimed = False
        for child in pending:
            trains = lambda c, d: train_child(c, d, saved.get(c.name))  # noqa: E731
            eta.later(sum(cost[c.name] for c in pending if c is not child and not done(study_dir / c.name)), workers)
            try:
                status = _claim(child, study_dir / child.name, trains, done, isolate, saved if write_config else None)
            finally:
                eta.later(0)
            if status is None:
                continue
            claimed, done_cost = True, done_cost + cost[child.name]
            rest = [c.name for c in kids if not done(study_dir / c.name)]
            seconds = eta.estimate(time.perf_counter() - t0, done_cost, sum(cost[n] for n in rest), workers)
            left = f"; about {duration(seconds)} left" if rest else ""
            print(f"[{total - len(rest)}/{total}] {child.name} {status}{left}", flush=True)
        if not claimed:
            time.sleep(1.0)  # every pending child is held by another worker: wait for it to finish or die
    return None


def _claim(child, run_dir, train_child, done, isolate, saved):
    """Take the child's lock and train it: its outcome, or None when another worker holds it or it has ended.
    saved: the children's config.json as read, where a missing one is written (None: no config.json here)."""
    run_dir.mkdir(exist_ok=True)
    lock = RunLock(run_dir)
    if not lock.held:
        return None
    try:
        if done(run_dir):
            return None
        if saved is not None and not (run_dir / "config.json").exists():
            saved[child.name] = child.cfg.to_dict()
            write_json(run_dir / "config.json", saved[child.name])
        print(f"== {child.name} (pid {os.getpid()})", flush=True)
        return attempt(child, run_dir, train_child, isolate)
    finally:
        lock.release()


def retry(kids, study_dir):
    """--retry_failed: the children that diverged or failed lose that outcome, and resume from their last.pt like
    any unfinished child; the study's report, which listed them, is no longer its last word."""
    again = [c for c in kids if ended(study_dir / c.name) and not finished(study_dir / c.name)]
    for child in again:
        (study_dir / child.name / "summary.json").unlink(missing_ok=True)
        print(f"{child.name}: trained again (--retry_failed)")
    if again:
        (study_dir / "summary.json").unlink(missing_ok=True)


def attempt(child, run_dir, train_child, isolate):
    """Train one child; returns "finished", or with isolate "diverged" / "failed" once summary.json says so and
    why. A stop, a full disk or a lost folder (OSError) is no outcome of the child's: it stops the study."""
    try:
        train_child(child, run_dir)
        return "finished"
    except (OSError, DiskFull):
        raise
    except Diverged as e:
        if not isolate:
            raise
        status, why = "diverged", str(e)
    except Exception as e:
        if not isolate:
            raise
        if not isinstance(e, (UsageError, CheckpointError, DataError)):  # a bug or a crash: its traceback helps
            traceback.print_exc()
        status, why = "failed", f"{type(e).__name__}: {e}"
    try:
        epochs = read_json(run_dir / "summary.json").get("epochs_run")  # what run.py wrote on divergence
    except (CheckpointError, AttributeError):
        epochs = None
    if epochs is None:
        with contextlib.suppress(CheckpointError):
            epochs = len(read_jsonl(run_dir / "metrics.jsonl"))
    write_json(run_dir / "summary.json", {"status": status, "error": why, "epochs_run": epochs})
    print(f"{child.name} {status}: {why.splitlines()[0] if why else ''}; the study goes on without it", flush=True)
    return status


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
    """Every child folder holds the child its study's config.json makes (not one replaced by hand or --overwrite);
    returns {child: its config.json} of the children that have one (read once)."""
    saved = {}
    for c in kids:
        if (study_dir / c.name / "config.json").exists():
            saved[c.name] = read_json(study_dir / c.name / "config.json", "child config")
            differ = differences(saved[c.name], c.cfg.to_dict(), skip=LOCAL)
            if differ:
                raise CheckpointError(
                    f"{study_dir / c.name} is not the child {study_dir / 'config.json'} makes "
                    f"({differ[0]} differs): the study or the child was edited or replaced"
                )
    return saved


def run(kids, study_dir, title, train_child, workers=1, rebuild=False, retry_failed=False, launcher=None, cost=None):
    """Work on the study until every child has ended, then report once (or again, with rebuild). launcher: see
    work(); the job of one child (assigned) reports nothing."""
    saved = check_children(kids, study_dir)
    if not rebuild:
        how = {"retry_failed": retry_failed, "launcher": launcher, "saved": saved, "cost": cost}
        waited = work(kids, study_dir, train_child, workers, **how)
        if assigned():
            return f"{assigned()}: done by this job"
        if waited is False:
            return "jobs submitted"
    if not all(ended(study_dir / c.name) for c in kids):
        left = [c.name for c in kids if not ended(study_dir / c.name)]
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
