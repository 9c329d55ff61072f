"""The one training loop: `train_one_epoch`, `evaluate`, and `fit` (epochs, validation, early stopping).

Every script uses it; what differs between plain training and distillation is only the loss function.
`fit` talks to the outside through one hook called at the end of each epoch (saver.py saves checkpoints
and logs there), and stops between two steps when STOP says so (Ctrl-C / SIGTERM). Inside a step nothing is
copied to the host: losses and counts accumulate on the device and are read only every `log_every` steps.
"""

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm import tqdm

import distributed
from errors import Diverged, Stopped, UsageError
from flags import flag, fraction, nonneg_float, nonneg_int, pos_float, pos_int, unit
from models import max_norm_


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = flag(10, "training epochs", type=pos_int)
    lr: float = flag(1e-3, "peak learning rate", type=pos_float)
    optimizer: str = flag("adam", "adam, adamw, or sgd (Nesterov momentum)", choices=("adam", "adamw", "sgd"))
    momentum: float = flag(0.9, "SGD momentum", type=unit)
    weight_decay: float = flag(0.0, "weight decay", type=nonneg_float)
    scheduler: str = flag(
        "none",
        "learning-rate schedule, stepped every batch; bare --scheduler = cosine; step = "
        "x0.1 at 50% and 75% of training",
        nargs="?",
        const="cosine",
        choices=("none", "cosine", "step", "onecycle"),
    )
    warmup_epochs: float = flag(0.0, "linear warm-up epochs", type=nonneg_float)
    label_smoothing: float = flag(0.0, "label smoothing", type=fraction)
    early_stopping: int = flag(
        0,
        "stop after PATIENCE epochs without a better validation accuracy and restore the best weights; 0 = off",
        type=nonneg_int,
        metavar="PATIENCE",
    )
    seed: int = flag(0, "random seed: weights, split, batches", type=nonneg_int)
    device: str = flag("auto", "auto = cuda, then mps, then cpu", choices=("auto", "cuda", "mps", "cpu"))
    amp: str = flag(
        "auto",
        "mixed precision: autocast in bf16, or fp16 with a GradScaler; auto = bf16 (fp16 where "
        "bf16 is unsupported) on CUDA, off elsewhere (bf16 CNN training can be much slower on a CPU: "
        "README, Measured speed)",
        choices=("auto", "bf16", "fp16", "off"),
    )
    compile: bool = flag(False, "torch.compile the model (pays off on CUDA)")
    log_every: int = 25  # steps between progress-bar updates (each one reads the device)

    def check_restored(self):
        """Read back from a run folder: its device and precision must exist on this machine."""
        try:
            resolve_amp(self.amp, resolve_device(self.device))
        except UsageError:
            raise UsageError(
                f"the run was trained with --device {self.device} --amp {self.amp}, which this machine "
                "cannot run; continue it where that device is"
            ) from None


class StopRequested(Exception):
    """Raised between two steps after Ctrl-C / SIGTERM; carries the unfinished epoch's accumulators (or None)."""

    def __init__(self, accum=None):
        super().__init__("stop requested")
        self.accum = accum


class Stop:
    """Ctrl-C / SIGTERM. Inside `deferring()` (the training loop) the first one only asks the loop to stop after
    the step in progress, so that the run can be saved exactly; elsewhere, and on a second Ctrl-C, it stops at
    once (Stopped). Under DDP the ranks could stop at different steps, so there it always stops at once."""

    def __init__(self):
        self.requested, self.deferred = None, False

    def handler(self, signum, frame):
        if self.deferred and self.requested is None and distributed.world() == 1:
            self.requested = signum
            return
        raise Stopped(signum)

    @contextmanager
    def deferring(self):
        self.requested, self.deferred = None, True
        try:
            yield
        finally:
            self.deferred = False
        if self.requested is not None:  # asked after the loop's last check (the last validation or checkpoint)
            raise Stopped(self.requested)

    def check(self, accum=None):
        if self.requested is not None:
            raise StopRequested(accum)


STOP = Stop()


def channels_last_for(device, cnn):
    """CNNs on CUDA run in channels_last (NHWC) memory, the layout cuDNN's tensor-core convolutions prefer.

    Not on the CPU, where NHWC saved little and the backward pass of a channels_last 1x1 stride-2 convolution
    from 4 channels crashed or hung in torch 2.14 (README, Measured speed).
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
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay, fused=fused
        )
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


@dataclass
class Optim:
    """What one optimizer step needs besides the model."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    max_norm: float = 0.0

    @classmethod
    def make(cls, params, cfg, steps_per_epoch, max_norm=0.0):
        optimizer = make_optimizer(params, cfg)
        total, warmup = cfg.epochs * steps_per_epoch, min(int(cfg.warmup_epochs * steps_per_epoch), 2**62)
        factor = partial(lr_factor, total=total, warmup=warmup, kind=cfg.scheduler)
        return cls(
            optimizer,
            torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            torch.amp.GradScaler(cfg.device.split(":")[0], enabled=cfg.amp == "fp16"),
            max_norm,
        )

    def state_dict(self):
        return {k: getattr(self, k).state_dict() for k in ("optimizer", "scheduler", "scaler")}

    def load_state_dict(self, state):
        for k in ("optimizer", "scheduler", "scaler"):
            if k in state or k != "optimizer":  # a finished run's last.pt may hold none (saver.Saver.finished)
                getattr(self, k).load_state_dict(state[k])
        # The learning rate of the next step, from this schedule (the same unless --epochs stretched it).
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)


@dataclass
class Progress:
    """Where training stands; saved in last.pt, so a resumed run continues exactly."""

    epoch: int = 0  # finished epochs
    best_val_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0  # training seconds, over all sessions
    history: list = field(default_factory=list)


def weight_layers(model):
    """(name, parameter) of every weight matrix / conv kernel: the layers whose gradients are tracked.

    Names are those of the bare model, also through DDP ("module.") or torch.compile ("_orig_mod.").
    """

    def bare(n):
        for prefix in ("_orig_mod.", "module."):
            n = n.removeprefix(prefix)
        return n.removesuffix(".weight")

    return [(bare(n), p) for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]


def train_one_epoch(model, loader, opt: Optim, loss_fn, autocast, epoch, log_every=25, desc="train", accum=None):
    """One pass over `loader`. Returns loss, acc, extra loss parts, and per-layer gradient statistics.

    accum: the accumulators of an epoch stopped part-way (StopRequested.accum), to finish it exactly.
    """
    model.train()
    layers = weight_layers(model)
    device = next(model.parameters()).device
    zero = lambda **kw: torch.zeros((), device=device, **kw)  # noqa: E731
    acc = {
        "loss_sum": zero(),
        "correct": zero(dtype=torch.long),
        "grad_sum": torch.zeros(len(layers), device=device),
        "parts_sum": {},
        "seen": 0,
        "step": 0,
    }
    if accum is not None:
        acc = {
            **accum,
            **{k: accum[k].to(device) for k in ("loss_sum", "correct", "grad_sum")},
            "parts_sum": {k: v.to(device) for k, v in accum["parts_sum"].items()},
        }
    bar = tqdm(
        loader,
        desc=f"{desc} {epoch + 1}",
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not distributed.is_main(),
        initial=acc["step"],
        total=len(loader),
    )
    for step, batch in enumerate(bar, start=acc["step"] + 1):
        with autocast():
            logits = model(batch.x)  # (B, classes)
            loss, parts = loss_fn(logits, batch)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.unscale_(opt.optimizer)  # true gradients for the norms below
        grads = [p.grad for _, p in layers]
        acc["grad_sum"] += torch.stack(torch._foreach_norm(grads)).float()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        if opt.max_norm:
            max_norm_(model, opt.max_norm)
        n = len(batch.y)
        acc["seen"], acc["step"] = acc["seen"] + n, step
        acc["loss_sum"] += loss.detach() * n
        acc["correct"] += (logits.argmax(1) == batch.y).sum()
        for k, v in parts.items():
            acc["parts_sum"][k] = acc["parts_sum"].get(k, 0) + v * n
        if step % log_every == 0:
            running = acc["loss_sum"].item() / acc["seen"]  # one device read per log_every steps
            if not math.isfinite(running):
                raise Diverged(f"loss became {running} in epoch {epoch + 1}, step {step}")
            bar.set_postfix(loss=f"{running:.4f}", acc=f"{acc['correct'].item() / acc['seen']:.4f}", refresh=False)
        if step < len(loader):
            STOP.check(acc)
    bar.close()
    return _epoch_record(acc, layers, grads, epoch, device)


def _epoch_record(acc, layers, grads, epoch, device):
    """The epoch's figures; under DDP summed over all ranks (the running figures were this rank's alone)."""
    parts = sorted(acc["parts_sum"])
    seen_t = torch.tensor(float(acc["seen"]), device=device)
    parts_t = [acc["parts_sum"][k] for k in parts]
    distributed.all_reduce_sum(acc["loss_sum"], acc["correct"], seen_t, acc["grad_sum"], *parts_t)
    seen, grad_sum = seen_t.item(), acc["grad_sum"] / distributed.world()
    total_loss = acc["loss_sum"].item() / seen
    if not math.isfinite(total_loss):
        raise Diverged(f"loss became {total_loss} in epoch {epoch + 1}")
    # Median |grad| of the first and last weight layer, from the epoch's last step.
    return {
        "train_loss": total_loss,
        "train_acc": acc["correct"].item() / seen,
        **{f"train_{k}": (v / seen).item() for k, v in zip(parts, parts_t)},
        "grad_norm": dict(zip([n for n, _ in layers], (grad_sum / acc["step"]).tolist())),
        "grad_median_first": grads[0].abs().median().item(),
        "grad_median_last": grads[-1].abs().median().item(),
    }


@torch.no_grad()
def evaluate(model, loader, autocast, return_preds=False, desc="evaluate"):
    """Loss and accuracy over `loader` (eval mode), with a progress bar; optionally the predictions (N,)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    preds, n = [], 0
    size = len(getattr(loader, "y", ())) or len(loader)
    for batch in tqdm(
        loader,
        desc=f"{desc} ({size:,} examples)",
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not distributed.is_main(),
    ):
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


def fit(
    step_model,
    loaders,
    opt: Optim,
    cfg: TrainConfig,
    loss_fn,
    progress: Progress,
    on_epoch_end,
    desc="train",
    partial=None,
):
    """Train from `progress` to cfg.epochs; on_epoch_end(record, improved) after each epoch (checkpoints, logs).

    step_model: the model as trained (DDP-wrapped / compiled). partial: an epoch stopped part-way
    ({"accum", "lr", "elapsed"}; its loader already positioned), to finish exactly.
    """
    autocast = make_autocast(cfg)
    with STOP.deferring():
        for epoch in range(progress.epoch, cfg.epochs):
            if cfg.early_stopping and progress.bad_epochs >= cfg.early_stopping:  # here: also when resumed after it
                print(
                    f"early stopping: no validation improvement for {cfg.early_stopping} epochs; "
                    f"restoring epoch {progress.best_epoch}",
                    flush=True,
                )
                break
            STOP.check()  # asked during validation or a checkpoint
            t0 = time.perf_counter()
            if partial is None:
                loaders.train.set_epoch(epoch)
            loss_fn.set_epoch(epoch, cfg.epochs)
            lr = partial["lr"] if partial else opt.optimizer.param_groups[0]["lr"]
            before = partial["elapsed"] if partial else 0.0
            try:
                rec = train_one_epoch(
                    step_model,
                    loaders.train,
                    opt,
                    loss_fn,
                    autocast,
                    epoch,
                    cfg.log_every,
                    desc,
                    partial and partial["accum"],
                )
            except StopRequested as stop:  # saver.py saves the part-done epoch from this
                stop.partial = stop.accum and {
                    "accum": stop.accum,
                    "lr": lr,
                    "elapsed": time.perf_counter() - t0 + before,
                }
                raise
            val = evaluate(step_model, loaders.val, autocast, desc="validation") if loaders.val is not None else None
            if val is not None and not math.isfinite(val["loss"]):
                raise Diverged(f"validation loss became {val['loss']} in epoch {epoch + 1}")
            dt, partial = time.perf_counter() - t0 + before, None
            rec = {
                "epoch": epoch + 1,
                "train_loss": rec["train_loss"],
                "train_acc": rec["train_acc"],
                "val_loss": val and val["loss"],
                "val_acc": val and val["acc"],
                "lr": lr,
                "epoch_time_s": dt,
                **rec,
            }
            improved = val is None or val["acc"] > progress.best_val_acc
            progress.epoch, progress.elapsed = epoch + 1, progress.elapsed + dt
            progress.history.append(rec)
            if improved:
                progress.best_val_acc, progress.best_epoch, progress.bad_epochs = (
                    val["acc"] if val else -1.0,
                    epoch + 1,
                    0,
                )
            else:
                progress.bad_epochs += 1
            on_epoch_end(rec, improved)


def resolve_device(request):
    if request == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if request == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    if request == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no MPS device is available here")
    return request


def resolve_amp(request, device, flag_name="--amp"):
    if not device.startswith("cuda"):
        if request == "fp16":
            raise UsageError(f"{flag_name} fp16 needs a CUDA device; use bf16 or off here")
        return "off" if request == "auto" else request
    if request == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return request


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
