"""Wall time until a model reaches a target test accuracy (a benchmark, not model selection).

    python bench/time_to_accuracy.py --data_root ../shared/data --target 0.98
    python bench/time_to_accuracy.py --dataset folder --data_root ../shared/data/cifar10-jpeg --model resnet20 \
        --augment --optimizer sgd --lr 0.2 --weight_decay 5e-4 --batch_size 512 --epochs 30 --target 0.90

Trains on the whole training set with exercise1's loader and loop, a one-cycle schedule over --epochs (the
budget), and evaluates the test set after every epoch, stopping at the first epoch at or above --target.
Prints a Markdown table of every epoch's test accuracy, wall time from the start of data loading and training
time, then whether and when the target was reached, and the peak memory.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, peak_rss_mib, seeded_model, train_epoch  # noqa: E402

from cli import run_main  # noqa: E402
from dataloader import DataConfig, make_loaders  # noqa: E402
from datasets import load_dataset  # noqa: E402
from device import channels_last_for, make_autocast, resolve_device  # noqa: E402
from engine import evaluate  # noqa: E402
from losses import CrossEntropy  # noqa: E402
from models import ModelConfig, is_cnn  # noqa: E402
from optim import Optim, TrainConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="any data set exercise1 reads (default: mnist)")
    p.add_argument("--data_root", default="./data")
    p.add_argument("--model", default="FlexibleMLP", help="any exercise1 model (default: FlexibleMLP 2x512)")
    p.add_argument("--target", type=float, default=0.98)
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--norm", default="batch")
    p.add_argument("--augment", action="store_true", help="crop + flip (colour) or small affine (grey)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--label_smoothing", type=float, default=0.0)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=8, help="epochs of the one-cycle schedule (the budget)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    ds = load_dataset(args.dataset, args.data_root)
    data = DataConfig(dataset=args.dataset, batch_size=args.batch_size, val_split=0.0, augment=args.augment)
    loaders = make_loaders(ds, data, 0, device, channels_last=channels_last_for(device, is_cnn(args.model)))
    model = seeded_model(
        ModelConfig(name=args.model, hidden_size=args.hidden_size, depth=args.depth, norm=args.norm), ds, device
    )
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        scheduler="onecycle",
        device=device,
        amp="bf16" if device.startswith("cuda") else "off",
    )
    opt, autocast = Optim.make(model.parameters(), cfg, len(loaders.train)), make_autocast(cfg)
    train_time, rows = 0.0, []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        train_epoch(model, loaders.train, opt, CrossEntropy(cfg.label_smoothing), autocast, epoch)
        train_time += time.perf_counter() - t0
        acc = evaluate(model, loaders.test, autocast, desc="test")["acc"]
        rows.append((epoch + 1, acc, time.perf_counter() - t_start, train_time))
        print(f"epoch {epoch + 1}: test acc {acc:.4f}, wall {rows[-1][2]:.1f}s", flush=True)
        if acc >= args.target:
            break
    print(
        f"\n{args.model} on {args.dataset}, batch {args.batch_size}, {args.epochs}-epoch one-cycle budget, "
        f"device {machine(device)}, torch {torch.__version__}\n"
    )
    print("| Epoch | Test acc | Wall (s), data loading included | Training (s) |\n|---|---|---|---|")
    for epoch, acc, wall, train in rows:
        print(f"| {epoch} | {acc:.4f} | {wall:.1f} | {train:.1f} |")
    epoch, acc, wall, train = rows[-1]
    print(
        f"\nreached {args.target:.1%} test accuracy after {epoch} epochs: {wall:.1f}s wall, {train:.1f}s training"
        if acc >= args.target
        else f"\ndid not reach {args.target:.1%} in {args.epochs} epochs ({wall:.1f}s wall); best test acc "
        f"{max(r[1] for r in rows):.4f}"
    )
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    return 0


if __name__ == "__main__":
    run_main(main)
