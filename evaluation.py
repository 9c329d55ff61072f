"""--evaluate PATH: a saved model (a run folder's best.pt, or any lab1 checkpoint such as last.pt) tested on a data
set's test split, its loss, accuracy and per-class accuracy printed; nothing is written into the run's folder.

    python exercise1.py --evaluate runs/<run>                        # on the data set it was trained on
    python exercise1.py --evaluate runs/<run>/last.pt --dataset fashion-mnist --data_root ./data --test_subset 500
"""

from pathlib import Path

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from dataloader import DataConfig, TensorLoader, channel_stats
from datasets import load_dataset
from device import make_autocast, place, resolve_amp, resolve_device
from engine import evaluate
from errors import CheckpointError, DataError, UsageError
from files import read_json
from optim import TrainConfig
from run import tested_on
from splits import check_sizes, examples_tested

BESIDE = ("evaluate", "dataset", "data_root", "test_subset", "device", "amp")  # the flags --evaluate reads


def checkpoint_path(path):
    """The checkpoint --evaluate reads: a file as given, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise CheckpointError(
                f"--evaluate {path}: no best.pt in it (give a run folder, its best.pt or its last.pt)"
            )
        return path / "best.pt"
    if not path.exists():
        raise CheckpointError(f"--evaluate {path}: it does not exist")
    return path


def _data_root(path, dataset):
    """Where the run found `dataset`: its config.json's data_root, if the checkpoint lies in a run folder that has
    one; else the flag's default."""
    try:
        data = read_json(path.parent / "config.json", "run config")["data"]
        if data["dataset"] == dataset and isinstance(data["data_root"], str):
            return data["data_root"]
    except (CheckpointError, KeyError, TypeError):
        pass
    return DataConfig.data_root


def _fits(arch, ds, dataset, path):
    """The data are of the shape and class count the model takes, else one line."""
    shape, k = tuple(arch["in_shape"]), arch["num_classes"]
    if shape != ds.in_shape or k != ds.num_classes:
        raise DataError(
            f"the model in {path} takes {'x'.join(map(str, shape))} images of {k} classes; {dataset}'s are "
            f"{'x'.join(map(str, ds.in_shape))} of {ds.num_classes}: give a data set it can take (--dataset)"
        )


def main(args, given):
    """Evaluate args.evaluate; returns 0. Flags other than BESIDE are refused (they would be ignored)."""
    if extra := sorted(given - set(BESIDE)):
        raise UsageError(f"--evaluate takes only --{', --'.join(BESIDE[1:])} beside it (got --{', --'.join(extra)})")
    path = checkpoint_path(args.evaluate)
    ckpt = load_checkpoint(path)  # weights_only: nothing in the file runs
    arch, model = ckpt["arch"], model_from_checkpoint(path, ckpt)
    dataset = args.dataset or arch.get("dataset")
    if not dataset:
        raise UsageError(f"{path} does not say which data set it was trained on: give --dataset")
    cfg = DataConfig(
        dataset=dataset,
        data_root=args.data_root or _data_root(path, dataset),
        val_split=0.0,
        test_subset=args.test_subset or 0,
    )
    ds = load_dataset(cfg.dataset, cfg.data_root)
    _fits(arch, ds, dataset, path)
    check_sizes(ds, cfg, seed=0)  # a --test_subset the test set cannot give
    x, y = examples_tested(ds, cfg)
    mean, std = (torch.tensor(v) for v in arch["input_norm"]) if arch.get("input_norm") else channel_stats(ds.train_x)
    device = resolve_device(args.device or "auto")
    autocast = make_autocast(TrainConfig(device=device, amp=resolve_amp(args.amp or "auto", device)))
    place(model, device, arch.get("is_cnn", False))
    loader = TensorLoader(x, y, 1024, mean, std, device)
    epoch = f", epoch {ckpt['epoch']}" if isinstance(ckpt.get("epoch"), int) else ""
    print(f"evaluating {path} ({arch['model'].get('name')}{epoch}) on {dataset} {tested_on(len(y), cfg.test_subset)}")
    if not arch.get("input_norm"):
        print("note: the checkpoint records no input normalisation; using this data set's training statistics")
    result = evaluate(model, loader, autocast, return_preds=True, desc="evaluate")
    _print(result, y, ds.classes)
    return 0


def _print(result, y, classes):
    k = len(classes)
    cm = torch.bincount(y * k + result["preds"], minlength=k * k).reshape(k, k)
    counts = cm.sum(1)
    print(f"test loss {result['loss']:.4f} acc {result['acc']:.4f}")
    print("per-class accuracy:")
    width = max(len(str(c)) for c in classes)
    for c, right, n in zip(classes, cm.diag().tolist(), counts.tolist()):
        print(f"  {str(c):<{width}}  {right / n:.4f} ({right:,} of {n:,})" if n else f"  {str(c):<{width}}  - (none)")
