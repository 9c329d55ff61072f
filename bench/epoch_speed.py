"""Training-epoch time: exercise1's device-resident tensor loader against the standard DataLoader pipeline
and against a bare loop (the model's forward/backward/step over batches prepared in advance: no slicing,
augmentation, metrics or gradient tracking), whose time is the model's own share of a step.

    python bench/epoch_speed.py --dataset mnist --data_root ../shared/data --model FlexibleMLP
    python bench/epoch_speed.py --dataset folder --data_root ../shared/data/cifar10-jpeg --model resnet20 --subset 5000

tensor and standard train the same model on the same data with the same augmentation through the same
train_one_epoch; only the loader differs. Prints a Markdown table of medians over --repeats epochs
(the first epoch of each is a warm-up and is not counted), measured side by side in one process, with the
share of the tensor loader's step spent outside the model (1 - bare / tensor) and peak memory.
"""

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import bare_epoch, machine, peak_rss_mib, seeded_model, timed_rounds, train_epoch  # noqa: E402

from cli import run_main  # noqa: E402
from dataloader import DataConfig, make_loaders  # noqa: E402
from datasets import load_dataset  # noqa: E402
from device import channels_last_for, make_autocast, resolve_amp, resolve_device  # noqa: E402
from losses import CrossEntropy  # noqa: E402
from models import ModelConfig, is_cnn  # noqa: E402
from optim import Optim, TrainConfig, make_optimizer  # noqa: E402


def time_epochs(kind, ds, args, device, amp):
    """Epoch times with the `kind` loader (tensor, standard) through exercise1's train_one_epoch, or for "bare"
    the model's step alone over the tensor loader's batches prepared once, outside the timing."""
    data = DataConfig(
        dataset=args.dataset,
        batch_size=args.batch_size,
        augment=args.augment,
        subset=args.subset,
        loader="tensor" if kind == "bare" else kind,
        num_workers=args.num_workers,
        val_split=0.0,
    )
    loaders = make_loaders(ds, data, 0, device, channels_last=channels_last_for(device, is_cnn(args.model)))
    model = seeded_model(ModelConfig(name=args.model, hidden_size=args.hidden_size, depth=args.depth), ds, device)
    step_model = torch.compile(model) if args.compile else model
    cfg = TrainConfig(device=device, amp=amp, epochs=args.repeats + 1)
    if kind == "bare":
        batches = [(b.x, b.y) for b in loaders.train]  # prepared once, outside the timing
        step = partial(bare_epoch, step_model, batches, make_optimizer(model.parameters(), cfg), make_autocast(cfg))
    else:
        opt = Optim.make(model.parameters(), cfg, len(loaders.train))
        step = partial(train_epoch, step_model, loaders.train, opt, CrossEntropy(), make_autocast(cfg), desc=kind)
    return timed_rounds({kind: step}, args.repeats, device)[kind], len(loaders.train_y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="data set (default: mnist)")
    p.add_argument("--data_root", default="./data", help="data folder (default: ./data)")
    p.add_argument("--model", default="FlexibleMLP", help="model name (default: FlexibleMLP)")
    p.add_argument("--hidden_size", type=int, default=512, help="FlexibleMLP width (default: 512)")
    p.add_argument("--depth", type=int, default=2, help="FlexibleMLP hidden layers (default: 2)")
    p.add_argument("--batch_size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--subset", type=int, default=0, help="training examples, 0 = all (default: 0)")
    p.add_argument("--augment", action="store_true", help="the data set's augmentation (crop/flip, or affine)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs after one warm-up epoch (default: 3)")
    p.add_argument("--num_workers", type=int, default=2, help="standard DataLoader's workers (default: 2)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if available)"
    )
    p.add_argument(
        "--amp",
        default="bf16" if torch.cuda.is_available() else "off",
        choices=("auto", "bf16", "fp16", "off"),
        help="autocast: bf16 / fp16 / off (default: bf16 on CUDA, off elsewhere)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (every loop, bare too)")
    p.add_argument(
        "--loaders",
        nargs="+",
        default=["tensor", "standard", "bare"],
        choices=("tensor", "standard", "bare"),
        help="which to time: tensor, standard, bare (default: all three)",
    )
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    amp, cuda = resolve_amp(args.amp, device), device.startswith("cuda")
    ds = load_dataset(args.dataset, args.data_root)
    rows = {}
    peak_cuda = {}
    for kind in args.loaders:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, n = time_epochs(kind, ds, args, device, amp)
        rows[kind] = (statistics.median(times), n)
        if cuda:
            peak_cuda[kind] = torch.cuda.max_memory_allocated() / 2**20
    print(
        f"\n{args.model} on {args.dataset}, batch {args.batch_size}, augment {args.augment}, amp {amp}, "
        f"compile {args.compile}, device {machine(device)}, torch {torch.__version__}, "
        f"median of {args.repeats} epochs\n"
    )
    print("| Loader | Epoch time (s) | Images/s | Speed-up vs standard | CUDA max allocated (MiB) |")
    print("|---|---|---|---|---|")
    base = rows.get("standard", (None,))[0]
    for kind, (t, n) in rows.items():
        speed = f"{base / t:.2f}x" if base else "-"
        mem = f"{peak_cuda[kind]:,.0f}" if kind in peak_cuda else "-"
        print(f"| {kind} | {t:.2f} | {n / t:,.0f} | {speed} | {mem} |")
    if "bare" in rows and "tensor" in rows:
        t, b = rows["tensor"][0], rows["bare"][0]
        print(f"\ntensor loader / bare loop: {t / b:.3f}x; share of the step outside the model: {1 - b / t:.1%}")
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    return 0


if __name__ == "__main__":
    run_main(main)
