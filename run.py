"""One training run: its model and loaders, the loop with its checkpoint policy (saver.py), the test of the best
weights, summary.json and the figures. exercise1 runs, study children, exercise2 phases and transfer modes all go
through it:

    run_dir = create_run_dir(save_dir, name, config)   # rundir.py: appears atomically, config.json inside
    result = train(model, ds, cfg, run_dir)           # continues run_dir/last.pt when there is one

last.pt is the truth: a resumed run rewrites metrics.jsonl from it and best.pt if it is stale, so a kill before
any write resumes to the same result. summary.json is written last and marks a run finished.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

import distributed
from checkpoint import FORMAT, arch_of, save_checkpoint
from config import RunConfig
from dataloader import make_loaders
from device import channels_last_for, make_autocast, place
from engine import STOP, Progress, StopRequested, evaluate, fit
from errors import CheckpointError, Diverged, Stopped, UsageError
from figures import plot_confusion, plot_curves, plot_grads
from files import RunLock, atomic_write, remove_stale_tmp, write_json, write_jsonl
from losses import CrossEntropy
from models import ModelConfig, build_model, count_params, is_cnn
from optim import Optim
from resume import record_epochs, restore
from saver import Saver, stale
from splits import check_sizes, stratified_kfold, stratified_subset, tested_indices
from tracking import StepPoints, finish_logger, log_model, open_logger, run_summary
from wandb_log import close_wandb

# ---------------------------------------------------------------- how to continue after Ctrl-C / SIGTERM


# ---------------------------------------------------------------- run folders


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


# ---------------------------------------------------------------- one training run


def describe_data(ds, cfg):
    """The `data:` line: the examples actually used (after --subset, the validation split, or per fold)."""
    sizes = check_sizes(ds, cfg.data, cfg.train.seed, cfg.data.k_folds)
    n = lambda v: "/".join(f"{x:,}" for x in v) if isinstance(v, list) else f"{v:,}"  # noqa: E731
    fold = f" (per fold of {cfg.data.k_folds})" if cfg.data.k_folds else ""
    part = f" (--test_subset of {len(ds.test_y):,})" if cfg.data.test_subset else ""
    print(
        f"data: {cfg.data.dataset}, {n(sizes['train'])} train / {n(sizes['val'])} validation{fold} / "
        f"{n(sizes['test'])} test examples{part} of {ds.num_classes} classes, {'x'.join(map(str, ds.in_shape))} | "
        f"device {cfg.train.device} | amp {cfg.train.amp}",
        flush=True,
    )


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


def train(model, ds, cfg: RunConfig, run_dir, loss_fn=None, desc="train", param_groups=None, wandb=None, saved=None):
    """Train `model` in run_dir (continuing its last.pt if there is one), test its best weights, write
    summary.json and the figures. wandb: extra WandbLogger arguments (group, job_type, prefix, name). saved: what
    run_dir/config.json holds, as the caller read it (a raised --epochs is written into it once all has loaded)."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir) if distributed.is_main() else None
    if lock is not None and not lock.held:
        raise UsageError(f"{run_dir} is being trained by another process right now (it holds {run_dir / '.lock'})")
    try:
        remove_stale_tmp(run_dir)
        return _train(
            model,
            ds,
            cfg,
            run_dir,
            loss_fn or CrossEntropy(cfg.train.label_smoothing),
            desc,
            param_groups,
            wandb or {},
            saved,
        )
    finally:
        if lock is not None:
            lock.release()


def _train(model, ds, cfg, run_dir, loss_fn, desc, param_groups, wandb, saved):
    t, main = cfg.train, distributed.is_main()
    loaders = loaders_for(ds, cfg)
    place(model, t.device, is_cnn(cfg.model.name))
    opt = Optim.make(param_groups or model.parameters(), t, len(loaders.train), cfg.model.max_norm)
    progress, partial, best, wandb_id = Progress(), None, None, None
    if (run_dir / "last.pt").exists():
        progress, partial, best, wandb_id = restore(run_dir, model, opt, loaders, desc, t.epochs)
    record_epochs(run_dir, saved, t.epochs)  # saved: what run_dir/config.json holds (a run's or a study child's)
    logger = open_logger(cfg, run_dir, resume_id=wandb_id, **wandb) if main else None
    meta = {
        "format": FORMAT,
        "arch": arch_of(cfg.model, ds, cfg.data.dataset, loaders.norm),
        "config": cfg.to_dict(),
        "wandb_id": logger.id if logger else None,
        "desc": desc,
    }
    saver = Saver(run_dir, meta, model, opt, progress, logger, best)
    saver.epoch_cost = max(1, count_params(model) * len(loaders.train_y))  # the unit of the time-left estimate
    if partial:  # the time-left estimate counts the part of an epoch already done before this session
        saver.epoch_start += partial["accum"]["step"] / len(loaders.train)
    if main:
        write_jsonl(run_dir / "metrics.jsonl", progress.history)  # the checkpoint's history is the truth
        if best is not None and stale(run_dir / "best.pt", progress.best_epoch):
            saver.write_best()
    step_model = distributed.wrap(model)
    step_model = torch.compile(step_model) if t.compile else step_model
    try:
        steps = logger and StepPoints(logger)  # per-step W&B points
        fit(step_model, loaders, opt, t, loss_fn, progress, saver.epoch_end, desc, partial, steps)
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


def _finish(model, ds, cfg, run_dir, loaders, progress, logger, desc):
    """Test the best weights once; figures first, summary.json last (it marks the run finished)."""
    test = evaluate(model, loaders.test, make_autocast(cfg.train), return_preds=True, desc=f"{desc}: test")
    k, preds, y = ds.num_classes, test["preds"], loaders.test_y
    cm = torch.bincount(y * k + preds, minlength=k * k).reshape(k, k)  # rows: true, columns: predicted
    result = {
        "status": "finished",
        "model": cfg.model.name,
        "params": count_params(model),
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "test_examples": len(y),
        "test_subset": cfg.data.test_subset,  # 0: the whole test set
        "best_val_acc": progress.best_val_acc if loaders.val is not None else None,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "train_time_s": progress.elapsed,
        "per_class_acc": dict(zip(ds.classes, (cm.diag() / cm.sum(1).clamp(min=1)).tolist())),
        "confusion": cm.tolist(),
    }
    if distributed.is_main():
        title = f"{run_dir.name} ({cfg.model.name})"
        plot_curves(progress.history, run_dir / "curves.png", title=title, best_epoch=progress.best_epoch)
        plot_grads(progress.history, run_dir / "grads.png", title=f"{title}: per-layer gradient norm")
        plot_confusion(cm, ds.classes, run_dir / "confusion.png", title=f"{title}: test set")
        save_predictions(run_dir / PREDICTIONS, tested_indices(ds, cfg.data), y, preds)
        write_json(run_dir / "summary.json", result)
        if logger:
            logger.log_images([run_dir / f for f in ("curves.png", "grads.png", "confusion.png")])
        log_model(logger, cfg.output.wandb_log_model, run_dir, desc, ["best", "latest"], **_card(result, cfg))
        finish_logger(logger, run_summary(result))
    print(
        f"{desc}: {tested_on(len(y), cfg.data.test_subset)} loss {test['loss']:.4f} acc {test['acc']:.4f} (best epoch "
        f"{progress.best_epoch}"
        + (f", val acc {progress.best_val_acc:.4f}" if loaders.val is not None else "")
        + f", {progress.elapsed:.1f}s of training)",
        flush=True,
    )
    return {**result, "history": progress.history, "test_preds": preds, "test_correct": preds == y}


PREDICTIONS = "test_predictions.npy"  # per test example: its index in the test set, its label, the predicted class
GIVEN_TEACHER_PREDICTIONS = "teacher_test_predictions.npy"  # exercise2's, of a --teacher_ckpt it tested (not trained)
PREDICTION = np.dtype([("index", "<i8"), ("label", "<i8"), ("pred", "<i8")])


def load_predictions(path):
    """(index, label, correct) of a test_predictions.npy, or a one-line CheckpointError: missing, damaged, or not
    one row of integers per test example."""
    try:
        rows = np.load(path, allow_pickle=False)
        index, label, pred = rows["index"], rows["label"], rows["pred"]
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as e:
        raise CheckpointError(f"{path} is unreadable or damaged ({type(e).__name__})") from None
    if index.ndim != 1 or not len(index) or not all(np.issubdtype(c.dtype, np.integer) for c in (index, label, pred)):
        raise CheckpointError(f"{path} is not one row of integers per test example")
    return index, label, pred == label


def save_predictions(path, index, label, pred):
    """The per-example test results (np.load(path)["pred"]: the predicted classes in test-set order), for paired
    tests between runs on the same examples (stats.mcnemar)."""
    rows = np.zeros(len(pred), PREDICTION)
    rows["index"], rows["label"], rows["pred"] = index.cpu().numpy(), label.cpu().numpy(), pred.cpu().numpy()

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, rows, allow_pickle=False)

    atomic_write(path, write, needed=rows.nbytes)


def tested_on(n, subset):
    """How a result line names the test examples: "test (10,000 examples)", "test (500 examples, --test_subset)"."""
    return f"test ({n:,} examples{', --test_subset' if subset else ''})"


# ---------------------------------------------------------------- W&B


def _card(result, cfg):
    """What a model artifact says about the model it holds."""
    keys = ("test_acc", "test_loss", "best_val_acc", "best_epoch", "params")
    return {"model": cfg.model.name, "dataset": cfg.data.dataset, **{k: result[k] for k in keys}}


def done(run_dir):
    """The last lines of a successful command: the W&B upload command if any, then the run folder (if given)."""
    close_wandb()
    if run_dir is not None:
        print(run_dir, flush=True)
