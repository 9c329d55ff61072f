"""The optimisation settings (TrainConfig) and what they build: the optimizer, the learning-rate schedule with
warm-up, and their state for a checkpoint."""

import math
from dataclasses import dataclass
from functools import partial

import torch

from device import resolve_amp, resolve_device
from errors import UsageError
from flags import flag, fraction, nonneg_float, nonneg_int, pos_float, pos_int, unit


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
        "bf16 is unsupported) on CUDA, off elsewhere, so that CPU runs compute in fp32 as published (bf16 on a "
        "CPU: README, Measured speed)",
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
