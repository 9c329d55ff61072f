"""The one training loop: `train_one_epoch`, `evaluate`, and `fit` (epochs, validation, early stopping).

Every script uses it; what differs between plain training and distillation is only the loss function.
`fit` talks to the outside through one hook called at the end of each epoch (saver.py saves checkpoints
and logs there), and stops between two steps when STOP says so (Ctrl-C / SIGTERM). Inside a step nothing is
copied to the host: losses and counts accumulate on the device and are read only every `log_every` steps.
"""

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import distributed
from device import make_autocast
from errors import Diverged, Stopped
from models import max_norm_
from optim import Optim


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


def train_one_epoch(
    model, loader, opt: Optim, loss_fn, autocast, epoch, log_every=25, desc="train", accum=None, on_step=None
):
    """One pass over `loader`. Returns loss, acc, extra loss parts, and per-layer gradient statistics.

    accum: the accumulators of an epoch stopped part-way (StopRequested.accum), to finish it exactly.
    on_step(epoch, step, steps, loss, lr): every `log_every` steps and at the last (loss: a tensor, read if used).
    """
    model.train()
    layers = weight_layers(model)
    device = next(model.parameters()).device
    acc = _accumulators(len(layers), device, accum)
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
        if on_step is not None and (step % log_every == 0 or step == len(loader)):  # beside the bar's device reads
            on_step(epoch, step, len(loader), loss.detach(), opt.optimizer.param_groups[0]["lr"])
        if step < len(loader):
            STOP.check(acc)
    bar.close()
    return _epoch_record(acc, layers, grads, epoch, device)


def _accumulators(n_layers, device, accum=None):
    """The epoch's running sums, kept on the device (a stopped epoch's, to finish it exactly)."""
    if accum is not None:
        return {
            **accum,
            **{k: accum[k].to(device) for k in ("loss_sum", "correct", "grad_sum")},
            "parts_sum": {k: v.to(device) for k, v in accum["parts_sum"].items()},
        }
    zero = lambda **kw: torch.zeros((), device=device, **kw)  # noqa: E731
    return {
        "loss_sum": zero(),
        "correct": zero(dtype=torch.long),
        "grad_sum": torch.zeros(n_layers, device=device),
        "parts_sum": {},
        "seen": 0,
        "step": 0,
    }


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


def _stops_early(cfg, progress):
    """Whether early stopping ends training here (checked before each epoch: also when resumed after it)."""
    if cfg.early_stopping and progress.bad_epochs >= cfg.early_stopping:
        print(
            f"early stopping: no validation improvement for {cfg.early_stopping} epochs; "
            f"restoring epoch {progress.best_epoch}",
            flush=True,
        )
        return True
    return False


def _advance(progress, rec, val):
    """Count a finished epoch into progress; whether it is the best so far (no validation: every epoch is)."""
    improved = val is None or val["acc"] > progress.best_val_acc
    progress.epoch, progress.elapsed = rec["epoch"], progress.elapsed + rec["epoch_time_s"]
    progress.history.append(rec)
    if improved:
        progress.best_val_acc, progress.best_epoch, progress.bad_epochs = (val["acc"] if val else -1.0, rec["epoch"], 0)
    else:
        progress.bad_epochs += 1
    return improved


def fit(step_model, loaders, opt, cfg, loss_fn, progress, on_epoch_end, desc="train", partial=None, on_step=None):
    """Train from `progress` to cfg.epochs; on_epoch_end(record, improved) after each epoch (checkpoints, logs),
    on_step as train_one_epoch's.

    step_model: the model as trained (DDP-wrapped / compiled). partial: an epoch stopped part-way
    ({"accum", "lr", "elapsed"}; its loader already positioned), to finish exactly.
    """
    autocast = make_autocast(cfg)
    with STOP.deferring():
        for epoch in range(progress.epoch, cfg.epochs):
            if _stops_early(cfg, progress):
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
                    on_step,
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
            on_epoch_end(rec, _advance(progress, rec, val))
