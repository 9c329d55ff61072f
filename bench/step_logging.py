"""The cost of per-step W&B points: epochs that log only their epoch point against epochs that also log the step's
loss and learning rate as training does (tracking.StepPoints: each epoch's last step, and between them at most one
point a second), and against a naive rate (a point every --log_every steps), all into one offline W&B run.

    python bench/step_logging.py --data_root ../shared/data              # MNIST, FlexibleMLP 4 x 128: short steps
    python bench/step_logging.py --dataset folder --data_root ../shared/data/cifar10-jpeg --model resnet20 \\
        --subset 5000

All train the same model through exercise1's train_one_epoch (with its progress-bar reads of the device every
--log_every steps) and take turns epoch by epoch, so a slow spell of a shared machine hits each. The table gives
each row's median epoch, the median over rounds of the difference to the same round's epoch without step points,
and the time spent inside the step hook (the loss read and wandb's log call): the steadier figure on a busy machine.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, seeded_model, timed_rounds  # noqa: E402

from cli import run_main  # noqa: E402
from dataloader import DataConfig, make_loaders  # noqa: E402
from datasets import load_dataset  # noqa: E402
from device import channels_last_for, make_autocast, resolve_device  # noqa: E402
from engine import train_one_epoch  # noqa: E402
from losses import CrossEntropy  # noqa: E402
from models import ModelConfig, is_cnn  # noqa: E402
from optim import Optim, TrainConfig  # noqa: E402
from tracking import StepPoints  # noqa: E402
from wandb_log import WandbLogger  # noqa: E402

ROWS = ("epoch points only", "step points as training logs them", "a step point every --log_every steps")


class Timed:
    """A step hook, with the seconds spent inside it and the points it logged."""

    def __init__(self, hook):
        self.hook, self.seconds, self.points = hook, 0.0, 0

    def __call__(self, *args):
        t0, before = time.perf_counter(), self.hook.last
        self.hook(*args)
        self.seconds += time.perf_counter() - t0
        self.points += self.hook.last != before


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="data set (default: mnist)")
    p.add_argument("--data_root", default="./data", help="data folder (default: ./data)")
    p.add_argument("--model", default="FlexibleMLP", help="model name (default: FlexibleMLP, 4 x 128)")
    p.add_argument("--batch_size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--subset", type=int, default=0, help="training examples, 0 = all (default: 0)")
    p.add_argument("--log_every", type=int, default=TrainConfig.log_every, help="steps between step points (25)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    ds = load_dataset(args.dataset, args.data_root)
    data = DataConfig(dataset=args.dataset, batch_size=args.batch_size, subset=args.subset, val_split=0.0)
    loader = make_loaders(ds, data, 0, device, channels_last=channels_last_for(device, is_cnn(args.model))).train
    model = seeded_model(ModelConfig(name=args.model), ds, device)
    cfg = TrainConfig(device=device, amp="off", epochs=2 * (args.repeats + 1))
    opt, autocast = Optim.make(model.parameters(), cfg, len(loader)), make_autocast(cfg)
    folder = tempfile.mkdtemp(prefix="lab1_step_logging_")
    logger = WandbLogger("offline", "lab1-bench", "step_logging", {"model": args.model}, dir=folder)
    loss_fn = CrossEntropy()
    hooks = {ROWS[1]: Timed(StepPoints(logger)), ROWS[2]: Timed(StepPoints(logger, interval=0.0))}

    def epoch_of(hook):
        def run(epoch):
            loader.set_epoch(epoch)
            rec = train_one_epoch(model, loader, opt, loss_fn, autocast, epoch, args.log_every, "bench", None, hook)
            logger.log({"train/loss": rec["train_loss"]}, step=epoch)  # the epoch point every row logs

        return run

    times = timed_rounds({row: epoch_of(hooks.get(row)) for row in ROWS}, args.repeats, device)
    logger.finish()
    shutil.rmtree(folder, ignore_errors=True)
    rounds, base = args.repeats + 1, statistics.median(times[ROWS[0]])  # every round logged, the warm-up's too
    print(
        f"\n{args.model} on {args.dataset}, {len(loader)} steps of {args.batch_size} per epoch, device "
        f"{machine(device)}, torch {torch.__version__}, median of {args.repeats} rounds, offline W&B run\n"
    )
    print("| Epoch | Epoch time (s) | vs epoch points only | Step points per epoch | In the step hook | Per point |")
    print("|---|---|---|---|---|---|")
    print(f"| {ROWS[0]} | {base:.3f} | - | 0 | - | - |")
    for row, hook in hooks.items():
        extra = statistics.median((b - a) / a for a, b in zip(times[ROWS[0]], times[row]))
        print(
            f"| {row} | {statistics.median(times[row]):.3f} | {extra:+.2%} | {hook.points / rounds:.0f} | "
            f"{hook.seconds / rounds / base:.3%} of an epoch | {hook.seconds / max(hook.points, 1) * 1e6:.0f} us |"
        )
    return 0


if __name__ == "__main__":
    run_main(main)
