"""Resuming a run: the folder and config that --resume names, a raised --epochs, and the training state of
last.pt restored and checked before anything is written."""

import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

import distributed
import rules
from checkpoint import check_finite, load_checkpoint, load_weights
from config import differences
from device import set_rng_state
from engine import Progress
from errors import CheckpointError, UsageError
from files import read_json, remove_stale_tmp, write_json
from rundir import finished, kind_of, record_resume, script_of
from stats import number


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
    config, found = _run_config(path, run_dir, kind)
    if found == "exercise1":
        _check_single_run(run_dir, config)
    config = {**config, "kind": found}
    try:  # a config.json that lies about what it holds is one line, like any damaged file
        built = build(config) if build else None
        scopes = {"exercise1": ("exercise1",), "study": ("exercise1",), "exercise2": ("exercise2",)}.get(found, ())
        rules.check(rules.restored(config.get("base", config)), *scopes, "run", restored=True)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{run_dir / 'config.json'} is damaged ({type(e).__name__}: {str(e)[:100]})") from None
    except UsageError as e:  # settings no command line could have given
        raise CheckpointError(f"{run_dir / 'config.json'} is damaged ({e})") from None
    remove_stale_tmp(run_dir)  # what writers killed in this folder left (its parts clean their own on resume)
    return run_dir, config, built


def _run_config(path, run_dir, kind):
    """run_dir's config.json and its kind, if it is a whole run of one of `kind` (a part names its whole)."""
    if (run_dir.parent / "config.json").exists():  # a study's child or an exercise2 phase: continued by its whole
        outer = read_json(run_dir.parent / "config.json", "run config")
        outer = kind_of(outer) if isinstance(outer, dict) else "exercise1"
        if outer != "exercise1":
            raise UsageError(
                f"{run_dir} is part of the run {run_dir.parent}; continue that: "
                f"{shlex.join(['python', script_of(outer), '--resume', str(run_dir.parent)])}"
            )
    if not (run_dir / "config.json").exists():
        raise CheckpointError(f"--resume {path}: no lab1 run folder there (config.json missing)")
    config = read_json(run_dir / "config.json", "run config")
    found = kind_of(config) if isinstance(config, dict) else None
    if found not in ("exercise1", "study", "exercise2", "finetune"):
        raise CheckpointError(f"{run_dir / 'config.json'} is damaged (not a lab1 run config)")
    if found not in kind:
        raise UsageError(
            f"{run_dir} is a run of {script_of(found)}, not of {Path(sys.argv[0]).name}; continue it with: "
            f"{shlex.join(['python', script_of(found), '--resume', str(run_dir)])}"
        )
    return config, found


def _check_single_run(run_dir, config):
    """An exercise1 run (a study's children: by their study) that its last.pt still matches, or can start over."""
    if (run_dir / "last.pt").exists():
        differ = differences(config, load_checkpoint(run_dir / "last.pt", mmap=True).get("config") or config)
        if differ:
            raise CheckpointError(
                f"{run_dir / 'config.json'} no longer says what {run_dir / 'last.pt'} was trained "
                f"with ({differ[0]}); the folder was edited: restore config.json"
            )
    elif finished(run_dir):
        raise CheckpointError(
            f"{run_dir} is finished but its last.pt is gone, so it cannot be extended; its results "
            "are in summary.json (start a new run to train again)"
        )
    else:
        print(f"{run_dir} has no last.pt (it stopped before its first checkpoint): training it from the start")


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


def record_epochs(run_dir, saved, epochs):
    """Write a raised --epochs into run_dir/config.json, which holds `saved` (as the command read it: it is not read
    again; None: a new run, nothing to record), and the resuming command into its command.txt. Called once
    everything the run needs has loaded, so that a resume refused on the way changes nothing."""
    if saved is None or not distributed.is_main():
        return
    record_resume(run_dir)
    train = saved["base"]["train"] if "base" in saved else saved["train"]
    if train["epochs"] != epochs:
        train = {**train, "epochs": epochs}
        saved = {**saved, "base": {**saved["base"], "train": train}} if "base" in saved else {**saved, "train": train}
        write_json(Path(run_dir) / "config.json", saved)


def restore(run_dir, model, opt, loaders, desc, epochs=None):
    """Restore last.pt into model / optimizer / RNG; returns (progress, accumulators of a part-done epoch, best).
    epochs: the run's epochs now (a raised --epochs), to say when a finished run's optimizer starts afresh."""
    path = run_dir / "last.pt"
    ckpt = load_checkpoint(path, need=("model", "arch", "scheduler", "rng", "epoch"))
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
    if "optimizer" not in ckpt and epochs is not None and progress.epoch < epochs:
        print(
            f"note: {path} holds no optimizer state (the run finished without --keep_optimizer): the optimizer's "
            f"state starts afresh for epochs {progress.epoch + 1}-{epochs}; the learning-rate schedule goes on "
            "where it was"
        )
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
