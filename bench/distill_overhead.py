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
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, peak_rss_mib, sync  # noqa: E402
from dataloader import DataConfig, load_dataset, make_loaders  # noqa: E402
from engine import TrainConfig, make_autocast, make_optimizer, make_scheduler, place, train_one_epoch  # noqa: E402
from losses import CrossEntropy, DistillLoss, held_in_bf16  # noqa: E402
from models import ModelConfig, build_model, is_cnn  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="data set (default: mnist)")
    p.add_argument("--data_root", default="./data", help="data folder (default: ./data)")
    p.add_argument("--teacher", default="FlexibleMLP", help="teacher model (default: FlexibleMLP)")
    p.add_argument("--student", default="FlexibleMLP", help="student model (default: FlexibleMLP)")
    p.add_argument("--t_hidden_sizes", type=int, nargs="+", default=[1200, 1200],
                   help="FlexibleMLP teacher's hidden layers (default: 1200 1200)")
    p.add_argument("--s_hidden_sizes", type=int, nargs="+", default=[800, 800],
                   help="FlexibleMLP student's hidden layers (default: 800 800)")
    p.add_argument("--batch_size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--subset", type=int, default=0, help="training examples, 0 = all (default: 0)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round (default: 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device (default: cuda if available)")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    ds = load_dataset(args.dataset, args.data_root)
    loaders = make_loaders(ds, DataConfig(dataset=args.dataset, batch_size=args.batch_size, subset=args.subset,
                                          val_split=0.0), 0, args.device)
    cfg = TrainConfig(device=args.device, amp="bf16" if cuda else "off", epochs=args.repeats + 1)
    autocast, bf16 = make_autocast(cfg), make_autocast(TrainConfig(device=args.device, amp="bf16"))

    def model(name, hidden):
        torch.manual_seed(0)
        m = build_model(ModelConfig(name=name, hidden_sizes=tuple(hidden)), ds.in_shape, ds.num_classes)
        return place(m, args.device, is_cnn(name))

    teacher = model(args.teacher, args.t_hidden_sizes).eval().requires_grad_(False)
    with torch.no_grad():  # the cache, as --cache_teacher builds it (not timed: it is paid once per teacher)
        cached = torch.empty(len(loaders.train_y), ds.num_classes, device=args.device)
        for b in loaders.train:
            with autocast():
                cached[b.idx] = teacher(b.x).float()
    losses = {"student alone": CrossEntropy(),
              f"distilled, on the fly ({cfg.amp if cuda else 'fp32'} teacher)":
                  DistillLoss(4.0, 0.5, teacher=teacher, autocast=autocast)}
    if not cuda:  # on CUDA the student, and so the teacher, already run in bf16
        losses["distilled, on the fly (bf16 autocast, fp32 teacher weights)"] = \
            DistillLoss(4.0, 0.5, teacher=teacher, autocast=bf16)
        losses["distilled, on the fly (bf16 teacher)"] = DistillLoss(4.0, 0.5, teacher=held_in_bf16(teacher),
                                                                     autocast=bf16)
    losses["distilled, cached"] = DistillLoss(4.0, 0.5, cached_logits=cached)
    runs = {}
    for name in losses:  # one student, optimizer and schedule per row, all from the same initial weights
        student = model(args.student, args.s_hidden_sizes)
        opt = make_optimizer(student.parameters(), cfg)
        runs[name] = (student, opt, make_scheduler(opt, cfg, len(loaders.train)))
    scaler = torch.amp.GradScaler(enabled=False)
    times = {name: [] for name in losses}
    for epoch in range(args.repeats + 1):
        loaders.train.set_epoch(epoch)
        for name, loss_fn in losses.items():
            student, opt, sched = runs[name]
            sync(args.device)
            t0 = time.perf_counter()
            train_one_epoch(student, loaders.train, opt, sched, scaler, loss_fn, autocast, epoch, 10 ** 9, name)
            sync(args.device)
            if epoch:  # the first round warms up allocators and kernels
                times[name].append(time.perf_counter() - t0)
    base = times["student alone"]
    print(f"\nteacher {args.teacher} {args.t_hidden_sizes if args.teacher == 'FlexibleMLP' else ''}, student "
          f"{args.student} {args.s_hidden_sizes if args.student == 'FlexibleMLP' else ''}, {args.dataset}, "
          f"batch {args.batch_size}, {machine(args.device)}, torch {torch.__version__}, {args.repeats} rounds\n")
    print("| Student epoch | Median time (s) | Over student alone (median of rounds) |")
    print("|---|---|---|")
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"| {name} | {statistics.median(t):.2f} | {ratio:.2f}x |")
    print(f"\npeak RSS of this process: {peak_rss_mib():,.0f} MiB"
          + (f"; CUDA max allocated {torch.cuda.max_memory_allocated() / 2 ** 20:,.0f} MiB" if cuda else ""))


if __name__ == "__main__":
    main()
