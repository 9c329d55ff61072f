"""A run's lifecycle around the training loop: its folder, config files, lock, resume, checkpoints, metrics,
W&B, and the final test and report. exercise1 runs, study children, exercise2 phases and transfer modes all
go through it:

    run_dir = create_run_dir(save_dir, name, config)   # appears atomically, config.json and command.txt inside
    result = train(model, ds, cfg, run_dir)           # continues run_dir/last.pt when there is one

Checkpoints (timm's CheckpointSaver does the same beside its loop): after every epoch last.pt (the whole
state, and the best weights when they are not the current ones) is written first, then best.pt (weights
only) if the epoch improved, then the metrics line. last.pt is the truth: a resumed run rewrites
metrics.jsonl from it and best.pt if it is stale, so a kill before any write resumes to the same result.
summary.json is written last and marks a run finished.
"""

import json
import os
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

import distributed
from checkpoint import (
    FORMAT,
    TMP,
    CheckpointError,
    RunLock,
    append_jsonl,
    load_checkpoint,
    load_file,
    load_weights,
    read_json,
    remove_stale_tmp,
    save_checkpoint,
    tmp_name,
    write_json,
    write_jsonl,
)
from cli import Stopped, UsageError, from_dict
from config import RunConfig
from dataloader import check_sizes, make_loaders, stratified_kfold, stratified_subset
from engine import (
    STOP,
    Diverged,
    Optim,
    Progress,
    StopRequested,
    channels_last_for,
    evaluate,
    fit,
    make_autocast,
    place,
)
from losses import CrossEntropy
from models import ModelConfig, build_model, count_params, is_cnn
from plots import plot_confusion, plot_curves, plot_grads
from stats import number

NAME_MAX = 200  # bytes of a folder name; file systems allow 255, and temporary names add a suffix


# ---------------------------------------------------------------- how to continue after Ctrl-C / SIGTERM

_hints = []


BUSY = ".busy"  # held shared by every command working in a run folder, training or not: --overwrite waits for none
_occupied = []


def working_in(run_dir):
    """From now until the command ends: a stop names `--resume run_dir` (continue_with), and run_dir is marked in
    use (released by run_main), so that --overwrite refuses it."""
    continue_with(command("--resume", run_dir))
    _occupied.append(RunLock(run_dir, BUSY, shared=True))


def vacate():
    while _occupied:
        _occupied.pop().release()


def continue_with(hint):
    """From now until the command ends, a stop prints `hint`, also once the work is done (a resume of a finished run
    says so). The first one set wins: a study's, not its child's."""
    if not _hints:
        _hints.append(hint)


def take_hint():
    hint = f"continue with: {_hints[0]}" if _hints else "nothing was saved; run the command again"
    _hints.clear()
    return hint


def command(*args):
    return shlex.join(["python", sys.argv[0], *map(str, args)])


# ---------------------------------------------------------------- run folders


def check_run_name(save_dir, name):
    """A plain, not too long name in a writable save_dir; checked before any work."""
    if not name or os.sep in name or name in (".", "..") or not name.isprintable() or TMP in name:
        raise UsageError(f"--run_name {name!r} must be a plain folder name, without a path separator (or {TMP})")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise UsageError(f"--run_name {name!r} is not valid UTF-8 text") from None
    if len(name.encode()) > NAME_MAX:
        raise UsageError(f"--run_name is {len(name.encode())} bytes long; folder names may have at most {NAME_MAX}")
    probe = Path(save_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK) or (os.geteuid() == 0 and not probe.stat().st_mode & 0o200):
        raise UsageError(f"--save_dir {save_dir}: {probe} is not a writable folder")


def short_name(name):
    """An automatic name cut to NAME_MAX bytes, with a hash of the whole so that different names stay different."""
    if len(name.encode()) <= NAME_MAX:
        return name
    import hashlib

    return f"{name.encode()[: NAME_MAX - 12].decode(errors='ignore')}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def check_run_dir(save_dir, name, overwrite=False, auto_named=False):
    """What create_run_dir would refuse, said before any work: a bad name or save_dir, an existing folder (without
    --overwrite), or, with it, something that is not a lab1 run folder."""
    check_run_name(save_dir, name)
    target = Path(save_dir) / name
    if not (target.exists() or target.is_symlink()) or auto_named and not overwrite:
        return
    if not overwrite:
        raise UsageError(
            f"run folder {target} already exists; pass --overwrite or another --run_name "
            f"(or continue it: {command('--resume', target)})"
        )
    if target.is_symlink() or not (target / "config.json").is_file():
        raise UsageError(
            f"{target} is not a lab1 run folder (no config.json); --overwrite replaces run folders only: "
            "pass another --run_name"
        )


def create_run_dir(save_dir, name, config, overwrite=False, auto_named=False):
    """SAVE_DIR/NAME with config.json and command.txt, made atomically: it appears whole or not at all, and two
    runs with one name never share it. An existing folder is an error unless overwrite (an automatic name gets
    a numeric suffix instead)."""
    check_run_dir(save_dir, name, overwrite, auto_named)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(save_dir)
    tmp = tmp_name(save_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_json(tmp / "config.json", config)
        (tmp / ".lock").touch()  # the run's lock file (RunLock), there from the start
        (tmp / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")
        if overwrite and (save_dir / name).exists():
            busy = [
                p.parent
                for lock in (".lock", BUSY)
                for p in (save_dir / name).rglob(lock)
                if RunLock.busy(p.parent, lock)
            ]
            if busy:
                raise UsageError(
                    f"{busy[0]} is being trained by another process right now; --overwrite would destroy its work"
                )
            shutil.rmtree(save_dir / name)
        for i in range(1, 1000):
            target = save_dir / (name if i == 1 else f"{name}_{i}")
            if not target.exists():
                try:
                    os.rename(tmp, target)  # fails if another process got there first with a non-empty folder
                    return target
                except OSError:
                    pass
            if not auto_named:
                raise UsageError(
                    f"run folder {target} already exists; pass --overwrite or another --run_name "
                    f"(or continue it: {command('--resume', target)})"
                )
        raise UsageError(f"could not create a run folder for {save_dir / name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resume_dir(path, kind, given, allowed=("resume", "epochs"), build=None):
    """The run folder that `--resume PATH` (the folder, or its last.pt) continues, and its config.json.

    Only a run of this script's kind, and only with nothing but `allowed` flags beside it; anything else is one
    line and changes nothing."""
    extra = sorted(given - set(allowed))
    if extra:
        may = ", ".join("--" + a for a in allowed if a != "resume")
        raise UsageError(
            f"--resume takes its settings from the run folder; only {may} "
            f"may be given beside it (got --{', --'.join(extra)})"
        )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--resume {path}: it does not exist")
    if path.is_file() and path.name != "last.pt":
        raise CheckpointError(
            f"--resume takes a run folder or its last.pt, not {path.name} (a published model such "
            "as best.pt holds weights only)"
        )
    run_dir = path if path.is_dir() else path.parent
    if (run_dir.parent / "config.json").exists():  # a study's child or an exercise2 phase: continued by its whole
        outer = read_json(run_dir.parent / "config.json", "run config")
        outer = _kind(outer) if isinstance(outer, dict) else "exercise1"
        if outer != "exercise1":
            raise UsageError(
                f"{run_dir} is part of the run {run_dir.parent}; continue that: "
                f"{shlex.join(['python', _script(outer), '--resume', str(run_dir.parent)])}"
            )
    if not (run_dir / "config.json").exists():
        raise CheckpointError(f"--resume {path}: no lab1 run folder there (config.json missing)")
    config = read_json(run_dir / "config.json", "run config")
    found = _kind(config) if isinstance(config, dict) else None
    if found not in ("exercise1", "study", "exercise2", "finetune"):
        raise CheckpointError(f"{run_dir / 'config.json'} is damaged (not a lab1 run config)")
    if found not in kind:
        raise UsageError(
            f"{run_dir} is a run of {_script(found)}, not of {Path(sys.argv[0]).name}; continue it with: "
            f"{shlex.join(['python', _script(found), '--resume', str(run_dir)])}"
        )
    if found == "exercise1" and (run_dir / "last.pt").exists():  # one run (a study's children: by their study)
        differ = differences(config, load_checkpoint(run_dir / "last.pt", mmap=True).get("config") or config)
        if differ:
            raise CheckpointError(
                f"{run_dir / 'config.json'} no longer says what {run_dir / 'last.pt'} was trained "
                f"with ({differ[0]}); the folder was edited: restore config.json"
            )
    elif found == "exercise1" and finished(run_dir):
        raise CheckpointError(
            f"{run_dir} is finished but its last.pt is gone, so it cannot be extended; its results "
            "are in summary.json (start a new run to train again)"
        )
    elif found == "exercise1":
        print(f"{run_dir} has no last.pt (it stopped before its first checkpoint): training it from the start")
    config = {**config, "kind": found}
    try:  # a config.json that lies about what it holds is one line, like any damaged file
        built = build(config) if build else None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{run_dir / 'config.json'} is damaged ({type(e).__name__}: {str(e)[:100]})") from None
    remove_stale_tmp(run_dir)  # what writers killed in this folder left (its parts clean their own on resume)
    return run_dir, config, built


def finished(run_dir):
    """Whether the run in run_dir (a run, a phase, a child or a whole study) says it finished."""
    try:
        return read_json(Path(run_dir) / "summary.json").get("status") == "finished"
    except (CheckpointError, AttributeError):  # not there yet, or damaged
        return False


def differences(a, b, where="", skip=("train.epochs",)):
    """The dotted keys whose values differ between two configs (keys only one has, and `skip`, aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(a.keys() & b.keys())
            if where + k not in skip
            for d in differences(a[k], b[k], f"{where}{k}.", skip)
        ]
    same = json.dumps(a, default=repr) == json.dumps(b, default=repr)  # a tensor where a number belongs: differs
    return [] if same else [where.rstrip(".") or "all of it"]


def extend_epochs(train, epochs, parts_of=None):
    """A resumed run's TrainConfig with --epochs EPOCHS (raised, never lowered); says when that stretches a schedule.
    parts_of: a study's or exercise2's folder, whose parts must all still be unfinished (else they would differ)."""
    if epochs is None or epochs == train.epochs:
        return train
    if epochs < train.epochs:
        raise UsageError(f"--epochs {epochs} beside --resume may only extend the run's {train.epochs} epochs")
    if parts_of is not None and (
        ended := sorted(p.parent.name for p in Path(parts_of).glob("*/summary.json") if finished(p.parent))
    ):
        raise UsageError(
            f"--epochs: {parts_of} has finished parts trained for {train.epochs} epochs "
            f"({', '.join(ended[:3])}"
            f"{' ...' if len(ended) > 3 else ''}); the rest would differ from them. Continue it as it is, "
            f"or start a new one with --epochs {epochs}"
        )
    if train.scheduler != "none":
        print(
            f"note: the {train.scheduler} learning-rate schedule now spans {epochs} epochs instead of "
            f"{train.epochs}; the epochs still to come follow the longer one"
        )
    return replace(train, epochs=epochs)


def record_epochs(run_dir, epochs):
    """Write a raised --epochs into run_dir/config.json: called once everything the run needs has loaded, so that a
    resume refused on the way changes nothing."""
    path = Path(run_dir) / "config.json"
    if not distributed.is_main() or not path.exists():
        return
    saved = read_json(path, "run config")
    train = saved["base"]["train"] if "base" in saved else saved["train"]
    if train["epochs"] != epochs:
        train["epochs"] = epochs
        write_json(path, saved)


def _script(kind):
    return "exercise2.py" if kind in ("exercise2", "finetune") else "exercise1.py"


def _kind(config):
    """exercise1 / study / exercise2 / finetune (folders written before the kind was recorded: by their keys)."""
    return config.get("kind") or (
        "exercise2"
        if "teacher" in config
        else "finetune"
        if "modes" in config
        else "study"
        if "base" in config
        else "exercise1"
    )


# ---------------------------------------------------------------- models


def new_model(cfg: ModelConfig, ds, seed, device="cpu"):
    """Seeded construction, after check_model."""
    check_model(cfg, ds, device)
    random.seed(seed)
    torch.manual_seed(seed)
    return build_model(cfg, ds.in_shape, ds.num_classes)


def check_model(cfg: ModelConfig, ds, device="cpu"):
    """Bad architecture values become one line; so does a model too large for the memory (sized on the meta
    device, so nothing is allocated)."""
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg, ds.in_shape, ds.num_classes).parameters())
    except (ValueError, KeyError, RuntimeError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    need = 16 * n  # fp32 weights, gradients and two optimizer moments
    free = (
        torch.cuda.mem_get_info()[0]
        if str(device).startswith("cuda")
        else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    )
    if need > free:
        raise UsageError(
            f"{cfg.name} has {n:,} parameters and needs about {need / 2**30:.1f} GiB for weights, "
            f"gradients and optimizer state; {free / 2**30:.1f} GiB are free on {device}"
        )


def arch_of(cfg: ModelConfig, ds, dataset, norm):
    """What a checkpoint needs to rebuild the model and feed it, including the input normalisation."""
    return {
        "model": asdict(cfg),
        "in_shape": list(ds.in_shape),
        "num_classes": ds.num_classes,
        "classes": list(ds.classes),
        "dataset": dataset,
        "is_cnn": is_cnn(cfg.name),
        "input_norm": norm,
    }


def model_from_arch(arch, path="checkpoint"):
    try:
        return build_model(from_dict(ModelConfig, arch["model"]), tuple(arch["in_shape"]), arch["num_classes"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} describes no buildable model ({str(e).splitlines()[0][:120]})") from None


def model_from_checkpoint(path, ckpt):
    """The model a checkpoint holds, with its weights; NaN or infinite weights are refused in one line."""
    model = model_from_arch(ckpt["arch"], path)
    load_weights(model, ckpt["model"], path)
    check_finite(model, path)
    return model


def check_finite(model, path):
    """Weights that are all finite numbers of the model's own dtypes, else one line."""
    state = model.state_dict()
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise CheckpointError(f"{path} holds NaN or infinite weights")


def publish(src, dst):
    """dst as a second name of the finished model src (a hard link; a copy where links are impossible)."""
    if Path(dst).exists() and os.path.samefile(src, dst):
        return
    tmp = tmp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # (a no-op that leaves tmp when both name one file: excluded above)


# ---------------------------------------------------------------- one training run


def describe_data(ds, cfg):
    """The `data:` line: the examples actually used (after --subset, the validation split, or per fold)."""
    sizes = check_sizes(ds, cfg.data, cfg.train.seed, cfg.data.k_folds)
    n = lambda v: "/".join(f"{x:,}" for x in v) if isinstance(v, list) else f"{v:,}"  # noqa: E731
    fold = f" (per fold of {cfg.data.k_folds})" if cfg.data.k_folds else ""
    print(
        f"data: {cfg.data.dataset}, {n(sizes['train'])} train / {n(sizes['val'])} validation{fold} / "
        f"{n(sizes['test'])} test examples of {ds.num_classes} classes, {'x'.join(map(str, ds.in_shape))} | "
        f"device {cfg.train.device} | amp {cfg.train.amp}",
        flush=True,
    )


def rng_state():
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Saver:
    """Writes a run's files at the end of each epoch (the hook engine.fit calls), and on a stop mid-epoch."""

    def __init__(self, run_dir, meta, model, opt, progress, logger, best):
        self.run_dir, self.meta, self.model, self.opt, self.progress = run_dir, meta, model, opt, progress
        self.logger, self.best, self.main = logger, best, distributed.is_main()
        self.t_start, self.epoch_start = time.perf_counter(), progress.epoch

    def state(self, partial=None):
        ckpt = {
            **self.meta,
            "model": self.model.state_dict(),
            **self.opt.state_dict(),
            "rng": rng_state(),
            **asdict(self.progress),
        }
        if self.best is not None and (partial or self.progress.best_epoch != self.progress.epoch):
            ckpt["best_model"] = self.best  # one file says which weights are best
        return {**ckpt, "partial": partial} if partial else ckpt

    def write_best(self):
        save_checkpoint(
            self.run_dir / "best.pt",
            {"format": FORMAT, "arch": self.meta["arch"], "model": self.best, "epoch": self.progress.best_epoch},
        )

    def epoch_end(self, rec, improved):
        if improved:  # every rank keeps the best weights (identical across ranks under DDP)
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.main:
            save_checkpoint(self.run_dir / "last.pt", self.state())
            if improved:
                self.write_best()
            append_jsonl(self.run_dir / "metrics.jsonl", rec)
            if self.logger:
                self.logger.log(wandb_record(rec), step=rec["epoch"])
        self.print_epoch(rec)

    def print_epoch(self, rec):
        epochs, done = self.meta["config"]["train"]["epochs"], rec["epoch"]
        val = f"val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} | " if rec["val_acc"] is not None else ""
        per_epoch = (time.perf_counter() - self.t_start) / max(done - self.epoch_start, 1e-3)
        left = f" | about {duration(per_epoch * (epochs - done))} left" if done < epochs else ""
        if distributed.is_main():
            print(
                f"{self.meta['desc']} epoch {done:3d}/{epochs} | train loss {rec['train_loss']:.4f} acc "
                f"{rec['train_acc']:.4f} | {val}lr {rec['lr']:.2e} | {rec['epoch_time_s']:.1f}s{left}",
                flush=True,
            )


def duration(seconds):
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


def wandb_record(rec):
    """metrics.jsonl record -> namespaced W&B keys (train/loss, val/acc, lr, grad/<layer>)."""
    out = {"epoch": rec["epoch"], "lr": rec["lr"], "epoch_time_s": rec["epoch_time_s"]}
    for k, v in rec.items():
        if v is None or k in out:
            continue
        if k == "grad_norm":
            out.update({f"grad/{layer}": g for layer, g in v.items()})
        elif k.startswith(("train_", "val_")):
            out["/".join(k.split("_", 1))] = v
        else:
            out[f"grad/{k}"] = v
    return out


def _resume(run_dir, model, opt, loaders, desc):
    """Restore last.pt into model / optimizer / RNG; returns (progress, accumulators of a part-done epoch, best)."""
    path = run_dir / "last.pt"
    ckpt = load_checkpoint(path, need=("model", "arch", "optimizer", "scheduler", "rng", "epoch"))
    for key in ("best_model", "model"):  # both must fit and be finite; the current weights are loaded last
        if key in ckpt:
            load_weights(model, ckpt[key], path)
            check_finite(model, path)
    try:
        opt.load_state_dict(ckpt)
        progress = Progress(**{f.name: ckpt[f.name] for f in fields(Progress)})
        _check_progress(progress, ckpt.get("partial"), len(loaders.train))
        set_rng_state(ckpt["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path} holds a damaged training state ({type(e).__name__}: {str(e)[:80]})") from None
    best = ckpt.get("best_model", ckpt["model"] if progress.best_epoch == progress.epoch and progress.epoch else None)
    partial = ckpt.get("partial")
    if partial is not None:
        loaders.train.seek(partial["loader"])
        where = f"epoch {progress.epoch + 1}, step {partial['accum']['step']} of {len(loaders.train)}"
    else:
        where = f"the end of epoch {progress.epoch}"
    print(f"{desc}: resuming at {where} ({run_dir})")
    return progress, partial, best, ckpt.get("wandb_id")


def _check_progress(p, partial, steps):
    """The progress fields of a last.pt, as training wrote them; anything else is a ValueError or TypeError."""
    if not (
        type(p.epoch) is int
        and type(p.best_epoch) is int
        and type(p.bad_epochs) is int
        and 0 <= p.best_epoch <= p.epoch
        and 0 <= p.bad_epochs <= p.epoch
        and number(p.best_val_acc)
        and number(p.elapsed)
        and isinstance(p.history, list)
        and len(p.history) == p.epoch
    ):
        raise ValueError("progress fields")
    for i, rec in enumerate(p.history, 1):
        if not (
            isinstance(rec, dict)
            and rec.get("epoch") == i
            and all(number(rec.get(k)) for k in ("train_loss", "train_acc", "lr", "epoch_time_s"))
            and all(rec.get(k) is None or number(rec[k]) for k in ("val_loss", "val_acc"))
        ):
            raise ValueError(f"history record {i}")
    if partial is None:
        return
    a, where = partial["accum"], partial["loader"]  # the accumulators of the epoch stopped part-way, and its position
    tensors = [a["loss_sum"], a["correct"], a["grad_sum"], *a["parts_sum"].values()]
    if not (
        type(a["step"]) is int
        and 0 < a["step"] < steps
        and where["step"] == a["step"]
        and where["epoch"] == p.epoch
        and type(a["seen"]) is int
        and a["seen"] > 0
        and number(partial["lr"])
        and number(partial["elapsed"])
        and all(isinstance(t, torch.Tensor) for t in tensors)
        and a["grad_sum"].ndim == 1
        and isinstance(where.get("generator", torch.empty(0)), torch.Tensor)
    ):
        raise ValueError("partial epoch")


def loaders_for(ds, cfg: RunConfig):
    data, seed = cfg.data, cfg.train.seed
    fold = None
    if data.fold:
        y = ds.train_y[stratified_subset(ds.train_y, data.subset, seed)] if data.subset else ds.train_y
        fold = stratified_kfold(y, data.k_folds, seed)[data.fold - 1]
    return make_loaders(
        ds,
        data,
        seed,
        cfg.train.device,
        fold,
        channels_last=channels_last_for(cfg.train.device, is_cnn(cfg.model.name)),
        shard=(distributed.rank(), distributed.world()),
    )


def train(model, ds, cfg: RunConfig, run_dir, loss_fn=None, desc="train", param_groups=None, wandb=None):
    """Train `model` in run_dir (continuing its last.pt if there is one), test its best weights, write
    summary.json and the figures. wandb: extra WandbLogger arguments (group, job_type, prefix, name)."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir) if distributed.is_main() else None
    if lock is not None and not lock.held:
        raise UsageError(f"{run_dir} is being trained by another process right now (it holds {run_dir / '.lock'})")
    try:
        remove_stale_tmp(run_dir)
        return _train(
            model, ds, cfg, run_dir, loss_fn or CrossEntropy(cfg.train.label_smoothing), desc, param_groups, wandb or {}
        )
    finally:
        if lock is not None:
            lock.release()


def _train(model, ds, cfg, run_dir, loss_fn, desc, param_groups, wandb):
    t, main = cfg.train, distributed.is_main()
    loaders = loaders_for(ds, cfg)
    place(model, t.device, is_cnn(cfg.model.name))
    opt = Optim.make(param_groups or model.parameters(), t, len(loaders.train), cfg.model.max_norm)
    progress, partial, best, wandb_id = Progress(), None, None, None
    if (run_dir / "last.pt").exists():
        progress, partial, best, wandb_id = _resume(run_dir, model, opt, loaders, desc)
    record_epochs(run_dir, t.epochs)  # a run or study child: its config.json (the phases of the others have none)
    logger = open_logger(cfg, run_dir, resume_id=wandb_id, **wandb) if main else None
    meta = {
        "format": FORMAT,
        "arch": arch_of(cfg.model, ds, cfg.data.dataset, loaders.norm),
        "config": cfg.to_dict(),
        "wandb_id": logger.id if logger else None,
        "desc": desc,
    }
    saver = Saver(run_dir, meta, model, opt, progress, logger, best)
    if partial:  # the time-left estimate counts the part of an epoch already done before this session
        saver.epoch_start += partial["accum"]["step"] / len(loaders.train)
    if main:
        write_jsonl(run_dir / "metrics.jsonl", progress.history)  # the checkpoint's history is the truth
        if best is not None and _stale(run_dir / "best.pt", progress.best_epoch):
            saver.write_best()
    step_model = distributed.wrap(model)
    step_model = torch.compile(step_model) if t.compile else step_model
    try:
        fit(step_model, loaders, opt, t, loss_fn, progress, saver.epoch_end, desc, partial)
    except StopRequested as stop:
        where = f"the end of epoch {progress.epoch}"
        if main and getattr(stop, "partial", None) and hasattr(loaders.train, "position"):
            save_checkpoint(run_dir / "last.pt", saver.state({**stop.partial, "loader": loaders.train.position()}))
            where = f"epoch {progress.epoch + 1}, step {stop.accum['step']} of {len(loaders.train)}"
        saved = f"{run_dir / 'last.pt'} holds {where}" if (run_dir / "last.pt").exists() else "nothing was saved yet"
        raise Stopped(STOP.requested, f"stopped in epoch {progress.epoch + 1}; {saved}") from None
    except Diverged as e:
        kept = f"; {run_dir / 'best.pt'} holds epoch {progress.best_epoch}" if (run_dir / "best.pt").exists() else ""
        if main:
            write_json(run_dir / "summary.json", {"status": "failed", "error": str(e), "epochs_run": progress.epoch})
        finish_logger(logger, {"status": "failed"})
        raise Diverged(f"{e}{kept}. Try a lower --lr, --amp off, or --norm") from None
    if saver.best is not None:
        model.load_state_dict(saver.best)
    return _finish(model, ds, cfg, run_dir, loaders, progress, logger, desc)


def _stale(path, epoch):
    if not path.exists():
        return True
    try:
        return load_file(path).get("epoch") != epoch
    except CheckpointError:
        return True


def _finish(model, ds, cfg, run_dir, loaders, progress, logger, desc):
    """Test the best weights once; figures first, summary.json last (it marks the run finished)."""
    test = evaluate(model, loaders.test, make_autocast(cfg.train), return_preds=True, desc=f"{desc}: test")
    k, preds = ds.num_classes, test["preds"]
    cm = torch.bincount(ds.test_y * k + preds, minlength=k * k).reshape(k, k)  # rows: true, columns: predicted
    result = {
        "status": "finished",
        "model": cfg.model.name,
        "params": count_params(model),
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "best_val_acc": progress.best_val_acc if loaders.val is not None else None,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "train_time_s": progress.elapsed,
        "per_class_acc": dict(zip(ds.classes, (cm.diag() / cm.sum(1).clamp(min=1)).tolist())),
        "confusion": cm.tolist(),
    }
    if distributed.is_main():
        title = f"{run_dir.name} ({cfg.model.name})"
        plot_curves(progress.history, run_dir / "curves.png", title=title)
        plot_grads(progress.history, run_dir / "grads.png", title=title)
        plot_confusion(cm, ds.classes, run_dir / "confusion.png", title=f"{title}: test set")
        write_json(run_dir / "summary.json", result)
        if logger:
            logger.log_images([run_dir / f for f in ("curves.png", "grads.png", "confusion.png")])
        finish_logger(logger, {k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    print(
        f"{desc}: test loss {test['loss']:.4f} acc {test['acc']:.4f} (best epoch {progress.best_epoch}"
        + (f", val acc {progress.best_val_acc:.4f}" if loaders.val is not None else "")
        + f", {progress.elapsed:.1f}s of training)",
        flush=True,
    )
    return {**result, "history": progress.history, "test_preds": preds}


# ---------------------------------------------------------------- W&B

_offline = []


def open_logger(cfg, run_dir, resume_id=None, name=None, **kw):
    if cfg.output.wandb == "disabled":
        return None
    from wandb_log import WandbLogger

    logger = WandbLogger(
        cfg.output.wandb,
        cfg.output.wandb_project,
        name or run_dir.name,
        cfg.to_dict(),
        resume_id=resume_id,
        dir=run_dir,
        **kw,
    )
    if logger.offline_dir:
        _offline.append(logger.offline_dir)
    return logger


def finish_logger(logger, summary):
    if logger:
        logger.finish(summary)


def close_wandb():
    """End of the work: close a shared (sweep) W&B run, and print one command that uploads all offline runs."""
    if "wandb_log" in sys.modules:
        from wandb_log import finish_process, sync_command

        finish_process()
        cmd = sync_command(_offline)
        _offline.clear()
        if cmd:
            print(f"W&B offline: upload later with `{cmd}`")


def done(run_dir):
    """The last lines of a successful command: the W&B upload command if any, then the run folder (if given)."""
    close_wandb()
    if run_dir is not None:
        print(run_dir, flush=True)
