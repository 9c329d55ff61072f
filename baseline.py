"""--baseline_dir: exercise2's student baseline trained once into a folder and reused by every run of the same
student, data and training settings (the trials of a temperature / alpha sweep differ only in T and alpha, which
the baseline never reads), as --teacher_dir does for the teacher."""

import shutil
import time
from pathlib import Path

from config import differences
from errors import UsageError
from files import RunLock, atomic_write, publish, read_json, write_json
from run import new_model, train
from rundir import finished

COPIED = ("metrics.jsonl", "curves.png", "grads.png", "confusion.png", "summary.json")  # summary.json last: done
LOCAL = ("output", "data.data_root", "data.num_workers")  # may differ between the runs that share the baseline


def share(cfg, ds, name, child_dir, wandb):
    """Student baseline `name` of experiment cfg: trained in --baseline_dir by the first run that gets there (a run
    that finds it in training waits), its settings checked against this run's, and given to child_dir: its best.pt
    as a second name, its metrics, figures and summary as copies."""
    folder = Path(cfg.distill.baseline_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--baseline_dir {folder} is a file; give a folder (made if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    pcfg, where = cfg.phase("student_baseline"), folder / name
    while not (lock := RunLock(folder)).held:
        print(f"waiting for the student baseline that another run trains in {folder}", flush=True)
        time.sleep(10)
    try:
        if (where / "config.json").exists():
            if differ := differences(read_json(where / "config.json", "run config"), pcfg.to_dict(), skip=LOCAL):
                raise UsageError(
                    f"--baseline_dir {folder} holds a {name} trained with other settings ({differ[0]} differs); "
                    "give another --baseline_dir"
                )
        else:
            where.mkdir(exist_ok=True)
            write_json(where / "config.json", pcfg.to_dict())
        if finished(where):
            print(f"{name}: trained earlier in {where}, reused", flush=True)
        else:
            print(f"== {name} (shared, in {folder})", flush=True)
            model = new_model(cfg.student, ds, cfg.train.seed, cfg.train.device)  # the distilled student's start
            train(model, ds, pcfg, where, desc=name, wandb=wandb)
    finally:
        lock.release()
    publish(where / "best.pt", Path(child_dir) / "best.pt")
    for f in COPIED:
        if (where / f).exists():
            atomic_write(Path(child_dir) / f, lambda tmp, src=where / f: shutil.copyfile(src, tmp))
