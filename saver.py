"""The checkpoint policy beside the training loop (timm's CheckpointSaver): after every epoch last.pt is written
first (the whole state, and the best weights when they are not the current ones), then best.pt if the epoch
improved, then the metrics line; on a stop mid-epoch, last.pt with the part-done epoch."""

import time
from dataclasses import asdict

import distributed
import eta
from checkpoint import FORMAT, load_file, save_checkpoint
from device import rng_state
from errors import CheckpointError
from files import append_jsonl
from tracking import log_epoch, log_model


class Saver:
    """Writes a run's files at the end of each epoch (the hook engine.fit calls), and on a stop mid-epoch."""

    def __init__(self, run_dir, meta, model, opt, progress, logger, best):
        self.run_dir, self.meta, self.model, self.opt, self.progress = run_dir, meta, model, opt, progress
        self.logger, self.best, self.main = logger, best, distributed.is_main()
        self.t_start, self.epoch_start = time.perf_counter(), progress.epoch
        self.epoch_cost = 1.0  # parameters x training examples of one epoch (eta.py), set by run.train

    def state(self, partial=None, lean=False):
        """last.pt's content; lean: without the optimizer's state (a finished run's, unless --keep_optimizer)."""
        ckpt = {
            **self.meta,
            "model": self.model.state_dict(),
            **self.opt.state_dict(),
            "rng": rng_state(),
            **asdict(self.progress),
        }
        if lean:  # the schedule's and scaler's few numbers stay: a raised --epochs continues the schedule
            del ckpt["optimizer"]
        if self.best is not None and (partial or self.progress.best_epoch != self.progress.epoch):
            ckpt["best_model"] = self.best  # one file says which weights are best
        return {**ckpt, "partial": partial} if partial else ckpt

    def finished(self):
        """Whether the epoch just ended is the run's last (its epochs done, or early stopping's patience spent), and
        its last.pt then leaves out the optimizer's state (moments as large as the model), unless --keep_optimizer;
        resume.restore says so when a raised --epochs starts that state afresh."""
        train, keep = self.meta["config"]["train"], self.meta["config"]["output"].get("keep_optimizer", False)
        patience = train.get("early_stopping", 0)
        return not keep and (self.progress.epoch >= train["epochs"] or 0 < patience <= self.progress.bad_epochs)

    def write_best(self):
        save_checkpoint(
            self.run_dir / "best.pt",
            {"format": FORMAT, "arch": self.meta["arch"], "model": self.best, "epoch": self.progress.best_epoch},
        )

    def epoch_end(self, rec, improved):
        if improved:  # every rank keeps the best weights (identical across ranks under DDP)
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.main:
            save_checkpoint(self.run_dir / "last.pt", self.state(lean=self.finished()))
            if improved:
                self.write_best()
            append_jsonl(self.run_dir / "metrics.jsonl", rec)
            if self.logger:
                log_epoch(self.logger, rec, self.progress.history, self.progress.best_epoch)
            if improved and self.meta["config"]["output"].get("wandb_log_model") == "all":
                log_model(self.logger, "all", self.run_dir, self.meta["desc"], [f"epoch-{rec['epoch']}"], **rec_of(rec))
        self.print_epoch(rec)

    def print_epoch(self, rec):
        epochs, done = self.meta["config"]["train"]["epochs"], rec["epoch"]
        val = f"val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} | " if rec["val_acc"] is not None else ""
        per_epoch = (time.perf_counter() - self.t_start) / max(done - self.epoch_start, 1e-3)
        left = eta.left(per_epoch * (epochs - done), per_epoch / self.epoch_cost) if done < epochs else ""
        if distributed.is_main():
            print(
                f"{self.meta['desc']} epoch {done:3d}/{epochs} | train loss {rec['train_loss']:.4f} acc "
                f"{rec['train_acc']:.4f} | {val}lr {rec['lr']:.2e} | {rec['epoch_time_s']:.1f}s{left}",
                flush=True,
            )


def rec_of(rec):
    """An epoch's figures as model-artifact metadata."""
    return {k: rec[k] for k in ("epoch", "train_loss", "val_loss", "val_acc") if rec.get(k) is not None}


def stale(path, epoch):
    if not path.exists():
        return True
    try:
        return load_file(path).get("epoch") != epoch
    except CheckpointError:
        return True
