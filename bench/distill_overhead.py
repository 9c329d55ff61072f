"""Distillation's cost: a distilled-student epoch over a student-alone epoch, teacher on the fly and cached.

    python bench/distill_overhead.py --data_root ../shared/data                      # MNIST, Hinton's MLPs
    python bench/distill_overhead.py --dataset folder --data_root ../shared/data/cifar10-jpeg --teacher resnet56 \\
        --student resnet20 --subset 5000

Every row trains the same student through the same train_one_epoch; only the loss differs: cross-entropy,
DistillLoss with the teacher run on each batch (in the student's precision; on the CPU also under bf16
autocast with its fp32 weights, and as a bf16 copy under bf16 autocast, as exercise2's --teacher_amp bf16 runs
it), DistillLoss reading logits computed once (--cache_teacher). The rows take turns epoch by epoch, so a
slow spell of a shared machine hits all of them; the table gives each row's median epoch and the median over
rounds of its epoch over the student-alone epoch of the same round.
"""

import argparse
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, peak_rss_mib, seeded_model, timed_rounds, train_epoch  # noqa: E402

from cli import run_main  # noqa: E402
from dataloader import DataConfig, make_loaders  # noqa: E402
from datasets import load_dataset  # noqa: E402
from device import make_autocast, resolve_device  # noqa: E402
from losses import CrossEntropy, DistillLoss, held_in_bf16  # noqa: E402
from models import ModelConfig  # noqa: E402
from optim import Optim, TrainConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="data set (default: mnist)")
    p.add_argument("--data_root", default="./data", help="data folder (default: ./data)")
    p.add_argument("--teacher", default="FlexibleMLP", help="teacher model (default: FlexibleMLP)")
    p.add_argument("--student", default="FlexibleMLP", help="student model (default: FlexibleMLP)")
    p.add_argument(
        "--t_hidden_sizes",
        type=int,
        nargs="+",
        default=[1200, 1200],
        help="FlexibleMLP teacher's hidden layers (default: 1200 1200)",
    )
    p.add_argument(
        "--s_hidden_sizes",
        type=int,
        nargs="+",
        default=[800, 800],
        help="FlexibleMLP student's hidden layers (default: 800 800)",
    )
    p.add_argument("--batch_size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--subset", type=int, default=0, help="training examples, 0 = all (default: 0)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round (default: 5)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: cuda if available)"
    )
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    ds = load_dataset(args.dataset, args.data_root)
    loaders = make_loaders(
        ds, DataConfig(dataset=args.dataset, batch_size=args.batch_size, subset=args.subset, val_split=0.0), 0, device
    )
    cfg = TrainConfig(device=device, amp="bf16" if cuda else "off", epochs=args.repeats + 1)
    autocast, bf16 = make_autocast(cfg), make_autocast(replace(cfg, amp="bf16"))

    def model(name, hidden):
        return seeded_model(ModelConfig(name=name, hidden_sizes=tuple(hidden)), ds, device)

    teacher = model(args.teacher, args.t_hidden_sizes).eval().requires_grad_(False)
    with torch.no_grad():  # the cache, as --cache_teacher builds it (not timed: it is paid once per teacher)
        cached = torch.empty(len(loaders.train_y), ds.num_classes, device=device)
        for b in loaders.train:
            with autocast():
                cached[b.idx] = teacher(b.x).float()
    losses = {
        "student alone": CrossEntropy(),
        f"distilled, on the fly ({cfg.amp if cuda else 'fp32'} teacher)": DistillLoss(
            4.0, 0.5, teacher=teacher, autocast=autocast
        ),
    }
    if not cuda:  # on CUDA the student, and so the teacher, already run in bf16
        losses["distilled, on the fly (bf16 autocast, fp32 teacher weights)"] = DistillLoss(
            4.0, 0.5, teacher=teacher, autocast=bf16
        )
        losses["distilled, on the fly (bf16 teacher)"] = DistillLoss(
            4.0, 0.5, teacher=held_in_bf16(teacher), autocast=bf16
        )
    losses["distilled, cached"] = DistillLoss(4.0, 0.5, cached_logits=cached)
    steps = {}
    for name, loss_fn in losses.items():  # one student and Optim per row, all from the same initial weights
        student = model(args.student, args.s_hidden_sizes)
        opt = Optim.make(student.parameters(), cfg, len(loaders.train))
        steps[name] = partial(train_epoch, student, loaders.train, opt, loss_fn, autocast, desc=name)
    times = timed_rounds(steps, args.repeats, device)
    base = times["student alone"]
    print(
        f"\nteacher {args.teacher} {args.t_hidden_sizes if args.teacher == 'FlexibleMLP' else ''}, student "
        f"{args.student} {args.s_hidden_sizes if args.student == 'FlexibleMLP' else ''}, {args.dataset}, "
        f"batch {args.batch_size}, {machine(device)}, torch {torch.__version__}, {args.repeats} rounds\n"
    )
    print("| Student epoch | Median time (s) | Over student alone (median of rounds) |")
    print("|---|---|---|")
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"| {name} | {statistics.median(t):.2f} | {ratio:.2f}x |")
    print(
        f"\npeak RSS of this process: {peak_rss_mib():,.0f} MiB"
        + (f"; CUDA max allocated {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if cuda else "")
    )
    return 0


if __name__ == "__main__":
    run_main(main)
