"""The one training loop: `train_one_epoch`, `evaluate`, and `fit` (epochs, checkpoints, early stopping).

Every script uses it; what differs between plain training and distillation is only the loss function.
Inside a step nothing is copied to the host: losses and counts accumulate on the device and are read
only every `log_every` steps (for the progress bar and the divergence check) and at the epoch's end.
"""
import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from tqdm import tqdm

import distributed

from checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tracking import write_jsonl


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"          # adam / adamw / sgd (momentum, Nesterov)
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"          # none / cosine / step / onecycle
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    early_stopping: int = 0          # patience in epochs on validation accuracy; 0 = off
    device: str = "cpu"              # resolved: cpu / cuda / mps
    amp: str = "off"                 # resolved: off / bf16 / fp16
    compile: bool = False
    seed: int = 0
    log_every: int = 25              # steps between progress-bar updates (each one reads the device)


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, after last.pt was saved; `hint` says how to continue (default: --resume resume_arg)."""

    def __init__(self, message, resume_arg=None, hint=None):
        super().__init__(message)
        self.resume_arg, self.hint = resume_arg, hint


def channels_last_for(device, cnn):
    """CNNs on CUDA run in channels_last (NHWC) memory, the layout cuDNN's tensor-core convolutions prefer.

    Not on the CPU. There NHWC saved little of a ResNet-20 training step (2-core AMD EPYC, torch 2.14.1), and
    the backward pass of a channels_last 1x1 stride-2 convolution from 4 channels (FlexibleCNN --width 4 with
    projection shortcuts) crashed with one thread and sometimes hung with two.
    """
    return str(device).startswith("cuda") and cnn


def place(model, device, cnn):
    """Move `model` to `device`, in channels_last memory where channels_last_for says so; returns it."""
    model.to(device)
    if channels_last_for(device, cnn):
        model.to(memory_format=torch.channels_last)
    return model


def make_autocast(cfg):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    return partial(torch.autocast, device_type=device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def make_optimizer(params, cfg):
    fused = cfg.device.startswith("cuda") or None  # one kernel per step on CUDA instead of one per tensor
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay,
                               fused=fused)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(step, total, warmup, kind):
    """Multiplier of the base learning rate at optimizer step `step` (of `total`), after `warmup` linear steps.

    cosine: to 0; step: x0.1 at 50% and 75% of training (He et al.'s 91/136 of 182 epochs);
    onecycle: up from 1/25 over the first 30% (or the warm-up), then cosine down to 1/2500.
    """
    if kind == "onecycle":
        up = warmup or int(0.3 * total)
        if step < up:
            return 0.04 + 0.96 * step / up
        p = (step - up) / max(1, total - up)
        return 4e-4 + (1 - 4e-4) * 0.5 * (1 + math.cos(math.pi * p))
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    if kind == "step":
        return 0.1 ** ((p >= 0.5) + (p >= 0.75))
    return 1.0


def make_scheduler(optimizer, cfg, steps_per_epoch):
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, total=total, warmup=warmup,
                                                                kind=cfg.scheduler))


def weight_layers(model):
    """(name, parameter) of every weight matrix / conv kernel: the layers whose gradients are tracked.

    Names are those of the bare model, also through DDP ("module.") or torch.compile ("_orig_mod.").
    """
    def bare(n):
        for prefix in ("_orig_mod.", "module."):
            n = n.removeprefix(prefix)
        return n.removesuffix(".weight")
    return [(bare(n), p) for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]


def train_one_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, autocast, epoch, log_every=25,
                    desc="train", partial=None):
    """One pass over `loader`. Returns loss, acc, extra loss parts, and per-layer gradient statistics.

    partial: the accumulators of an epoch stopped part-way (StopRequested.partial), to finish it exactly.
    """
    model.train()
    layers = weight_layers(model)
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    grad_sum = torch.zeros(len(layers), device=device)
    parts_sum, seen, step = {}, 0, 0
    if partial is not None:
        loss_sum, correct, grad_sum = (partial[k].to(device) for k in ("loss_sum", "correct", "grad_sum"))
        parts_sum = {k: v.to(device) for k, v in partial["parts_sum"].items()}
        seen, step = partial["seen"], partial["step"]
    bar = tqdm(loader, desc=f"{desc} {epoch + 1}", leave=False, dynamic_ncols=True, mininterval=0.5,
               disable=not distributed.is_main(), initial=step, total=len(loader))
    for step, batch in enumerate(bar, start=step + 1):
        with autocast():
            logits = model(batch.x)                              # (B, classes)
            loss, parts = loss_fn(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)                               # true gradients for the norms below
        grads = [p.grad for _, p in layers]
        grad_sum += torch.stack(torch._foreach_norm(grads)).float()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = len(batch.y)
        seen += n
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == batch.y).sum()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0) + v * n
        if step % log_every == 0:
            running = loss_sum.item() / seen                     # one device read per log_every steps
            if not math.isfinite(running):
                raise Diverged(f"loss became {running} in epoch {epoch + 1}, step {step}")
            bar.set_postfix(loss=f"{running:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False)
        if _stop["requested"] and step < len(loader):
            bar.close()
            raise StopRequested({"loss_sum": loss_sum, "correct": correct, "grad_sum": grad_sum,
                                 "parts_sum": parts_sum, "seen": seen, "step": step})
    bar.close()
    # Under DDP: sums over all ranks (the running figures above were this rank's alone).
    seen_t = torch.tensor(float(seen), device=device)
    parts_t = [parts_sum[k] for k in sorted(parts_sum)]
    distributed.all_reduce_sum(loss_sum, correct, seen_t, grad_sum, *parts_t)
    parts_sum = dict(zip(sorted(parts_sum), parts_t))
    seen, grad_sum = seen_t.item(), grad_sum / distributed.world()
    total_loss = loss_sum.item() / seen
    if not math.isfinite(total_loss):
        raise Diverged(f"loss became {total_loss} in epoch {epoch + 1}, step {step}")
    first, last = grads[0], grads[-1]
    # Median |grad| of the first and last weight layer, from the epoch's last step.
    return {"train_loss": total_loss, "train_acc": correct.item() / seen,
            **{f"train_{k}": (v / seen).item() for k, v in parts_sum.items()},
            "grad_norm": dict(zip([n for n, _ in layers], (grad_sum / step).tolist())),
            "grad_median_first": first.abs().median().item(), "grad_median_last": last.abs().median().item()}


@torch.no_grad()
def evaluate(model, loader, autocast, return_preds=False):
    """Loss and accuracy over `loader` (eval mode); optionally the predicted classes (N,)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    preds, n = [], 0
    for batch in loader:
        with autocast():
            logits = model(batch.x)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), batch.y, reduction="sum")
        p = logits.argmax(1)
        correct += (p == batch.y).sum()
        n += len(batch.y)
        if return_preds:
            preds.append(p)
    out = {"loss": loss_sum.item() / n, "acc": correct.item() / n}
    if return_preds:
        out["preds"] = torch.cat(preds).cpu()
    return out


class StopRequested(Exception):
    """Raised between two steps after Ctrl-C / SIGTERM; carries the unfinished epoch's accumulators."""

    def __init__(self, partial):
        super().__init__("stop requested")
        self.partial = partial


_stop = {"requested": False}


@contextmanager
def _stop_on_signals():
    """Ctrl-C and SIGTERM ask the loop to stop after the step in progress; a second Ctrl-C stops at once.

    Under DDP the ranks could stop at different steps, so there both signals interrupt at once.
    """
    def request_stop(signum, frame):
        if _stop["requested"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _stop["requested"] = True

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    handler = request_stop if distributed.world() == 1 else interrupt
    _stop["requested"] = False
    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave the signals alone
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(model, loaders, cfg, run_dir, loss_fn, meta, logger=None, resume=None, desc="train", quiet=False,
        param_groups=None):
    """Train with checkpoints in run_dir; return the summary after testing the best-on-validation weights.

    meta: what every checkpoint records besides the training state (arch, config). resume: a loaded
    last.pt whose state continues here. param_groups: optimizer groups (e.g. a lower backbone lr) instead of
    all parameters. The test set is evaluated once, at the end.
    """
    device = torch.device(cfg.device)
    place(model, device, meta["arch"]["is_cnn"])
    optimizer = make_optimizer(param_groups or model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, len(loaders.train))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    autocast = make_autocast(cfg)
    step_model = distributed.wrap(model)
    step_model = torch.compile(step_model) if cfg.compile else step_model
    main = distributed.is_main()  # only rank 0 writes files and prints
    state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0, "history": []}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        state = {k: resume[k] for k in state}
        set_rng_state(resume["rng"])
    best_weights = None
    if resume is not None and (run_dir / "best.pt").exists():
        best_weights = load_checkpoint(run_dir / "best.pt")["model"]
    if main:
        write_jsonl(run_dir / "metrics.jsonl", state["history"])  # the checkpoint's history is the truth

    def checkpoint():
        return {"format": FORMAT, **meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(), **state}

    print_line = (lambda *a, **k: None) if quiet or not main else print
    partial = resume.get("partial") if resume is not None else None  # an epoch stopped part-way
    if partial is not None:
        loaders.train.seek(partial["loader"])
    try:
        with _stop_on_signals():
            for epoch in range(state["epoch"], cfg.epochs):
                if _stop["requested"]:  # asked during validation or a checkpoint: last.pt holds this epoch
                    raise KeyboardInterrupt
                t0 = time.perf_counter() - (partial["elapsed"] if partial else 0.0)
                if partial is None:
                    loaders.train.set_epoch(epoch)
                loss_fn.set_epoch(epoch, cfg.epochs)
                lr = partial["lr"] if partial else optimizer.param_groups[0]["lr"]
                rec = train_one_epoch(step_model, loaders.train, optimizer, scheduler, scaler, loss_fn, autocast,
                                      epoch, cfg.log_every, desc, partial["accum"] if partial else None)
                partial = None
                val = evaluate(step_model, loaders.val, autocast) if loaders.val is not None else None
                dt = time.perf_counter() - t0
                rec = {"epoch": epoch + 1, **{k: rec[k] for k in ("train_loss", "train_acc")},
                       "val_loss": val["loss"] if val else None, "val_acc": val["acc"] if val else None,
                       "lr": lr, "epoch_time_s": dt, **rec}
                improved = val is None or val["acc"] > state["best_val_acc"]
                state["elapsed"] += dt
                state["epoch"] = epoch + 1
                state["history"].append(rec)
                if improved:
                    state.update(best_val_acc=val["acc"] if val else -1.0, best_epoch=epoch + 1, bad_epochs=0)
                else:
                    state["bad_epochs"] += 1
                if improved:  # every rank keeps the best weights (identical across ranks under DDP)
                    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if main:
                    ckpt = checkpoint()
                    save_checkpoint(run_dir / "last.pt", ckpt)
                    if improved:
                        save_checkpoint(run_dir / "best.pt", ckpt)
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if logger is not None:
                        logger.log(_wandb_record(rec), step=epoch + 1)
                val_txt = f"val loss {val['loss']:.4f} acc {val['acc']:.4f} | " if val else ""
                print_line(f"{desc} epoch {epoch + 1:3d}/{cfg.epochs} | train loss {rec['train_loss']:.4f} "
                           f"acc {rec['train_acc']:.4f} | {val_txt}lr {lr:.2e} | {dt:.1f}s", flush=True)
                if cfg.early_stopping and state["bad_epochs"] >= cfg.early_stopping:
                    print_line(f"early stopping: no validation improvement for {cfg.early_stopping} epochs; "
                               f"restoring epoch {state['best_epoch']}", flush=True)
                    break
    except StopRequested as stop:
        if main and hasattr(loaders.train, "position"):
            partial = {"accum": stop.partial, "loader": loaders.train.position(), "lr": lr,
                       "elapsed": time.perf_counter() - t0}
            save_checkpoint(run_dir / "last.pt", {**checkpoint(), "partial": partial})
            where = f"epoch {state['epoch'] + 1}, step {stop.partial['step']} of {len(loaders.train)}"
        else:
            where = f"epoch {state['epoch']} (the last finished one)"
        raise Interrupted(f"stopped in epoch {state['epoch'] + 1}; {run_dir / 'last.pt'} holds {where}",
                          run_dir / "last.pt") from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted in epoch {state['epoch'] + 1}; {run_dir / 'last.pt'} holds epoch "
                          f"{state['epoch']}", run_dir / "last.pt") from None
    except Diverged as e:
        raise Diverged(f"{e}; {run_dir / 'best.pt'} is intact. Try a lower --lr, --amp off, or --norm") from None

    if best_weights is not None:
        model.load_state_dict(best_weights)
    test = evaluate(model, loaders.test, autocast, return_preds=True)
    return {"test_acc": test["acc"], "test_loss": test["loss"],
            "best_val_acc": state["best_val_acc"] if loaders.val is not None else None,
            "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "train_time_s": state["elapsed"],
            "history": state["history"], "test_preds": test["preds"]}


def _wandb_record(rec):
    """metrics.jsonl record -> namespaced W&B keys (train/loss, val/acc, lr, grad/<layer>)."""
    out = {"lr": rec["lr"], "epoch_time_s": rec["epoch_time_s"]}
    for k, v in rec.items():
        if v is None or k in ("epoch", "lr", "epoch_time_s"):
            continue
        if k == "grad_norm":
            out.update({f"grad/{layer}": g for layer, g in v.items()})
        elif k.startswith(("train_", "val_")):
            split, name = k.split("_", 1)
            out[f"{split}/{name}"] = v
        else:
            out[f"grad/{k}"] = v
    return out
