"""Distillation's cost: a distilled-student epoch over a student-alone epoch, teacher on the fly and cached.

    python bench/distill_overhead.py --data_root ../shared/data                      # MNIST, Hinton's MLPs
    python bench/distill_overhead.py --dataset folder --data_root ../shared/data/cifar10-jpeg --teacher resnet56 \\
        --student resnet20 --subset 5000

All three train the same student through the same train_one_epoch; only the loss differs (cross-entropy,
DistillLoss with the teacher run on each batch, DistillLoss reading logits computed once). Medians over
--repeats epochs after a warm-up, side by side in one process.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataloader import DataConfig, load_dataset, make_loaders  # noqa: E402
from engine import TrainConfig, make_autocast, make_optimizer, make_scheduler, train_one_epoch  # noqa: E402
from losses import CrossEntropy, DistillLoss  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data_root", default="./data")
    p.add_argument("--teacher", default="FlexibleMLP")
    p.add_argument("--student", default="FlexibleMLP")
    p.add_argument("--t_hidden_sizes", type=int, nargs="+", default=[1200, 1200])
    p.add_argument("--s_hidden_sizes", type=int, nargs="+", default=[800, 800])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--subset", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    amp = "bf16" if args.device.startswith("cuda") else "off"
    ds = load_dataset(args.dataset, args.data_root)
    loaders = make_loaders(ds, DataConfig(dataset=args.dataset, batch_size=args.batch_size, subset=args.subset,
                                          val_split=0.0), 0, args.device)
    cfg = TrainConfig(device=args.device, amp=amp, epochs=args.repeats + 1)
    autocast = make_autocast(cfg)
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(name=args.teacher, hidden_sizes=tuple(args.t_hidden_sizes)), ds.in_shape,
                          ds.num_classes).to(args.device).eval().requires_grad_(False)
    with torch.no_grad():  # the cache, as --cache_teacher builds it (not timed: it is paid once per teacher)
        cached = torch.empty(len(loaders.train_y), ds.num_classes, device=args.device)
        for b in loaders.train:
            with autocast():
                cached[b.idx] = teacher(b.x).float()
    losses = {"student alone": CrossEntropy(), "distilled, on the fly": DistillLoss(4.0, 0.5, teacher=teacher,
                                                                                     autocast=autocast),
              "distilled, cached": DistillLoss(4.0, 0.5, cached_logits=cached)}
    rows = {}
    for name, loss_fn in losses.items():
        torch.manual_seed(0)
        student = build_model(ModelConfig(name=args.student, hidden_sizes=tuple(args.s_hidden_sizes)), ds.in_shape,
                              ds.num_classes).to(args.device)
        opt = make_optimizer(student.parameters(), cfg)
        sched = make_scheduler(opt, cfg, len(loaders.train))
        scaler = torch.amp.GradScaler(enabled=False)
        times = []
        for epoch in range(args.repeats + 1):
            loaders.train.set_epoch(epoch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_one_epoch(student, loaders.train, opt, sched, scaler, loss_fn, autocast, epoch, 10 ** 9, name)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if epoch:
                times.append(time.perf_counter() - t0)
        rows[name] = statistics.median(times)
    base = rows["student alone"]
    print(f"\nteacher {args.teacher} {args.t_hidden_sizes if args.teacher == 'FlexibleMLP' else ''}, student "
          f"{args.student} {args.s_hidden_sizes if args.student == 'FlexibleMLP' else ''}, {args.dataset}, "
          f"batch {args.batch_size}, device {args.device}, median of {args.repeats} epochs\n")
    print("| Student epoch | Time (s) | Over student alone |")
    print("|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t:.2f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
