"""Train and evaluate one MLP or CNN; every run leaves a folder that can rebuild it.

    python exercise1.py                                   # the default FlexibleMLP on MNIST
    python exercise1.py --model FlexibleMLP --epochs 50 --lr 1e-3 --batch_size 128 --hidden_size 128 \\
        --depth 20 --residual --norm --scheduler
    python exercise1.py --model FlexibleCNN --layers 2 2 2 2 --residual --norm --scheduler --dataset cifar10
    python exercise1.py --model resnet56 --dataset cifar10 --optimizer sgd --lr 0.1 --epochs 182
    python exercise1.py --model resnet20 --dataset folder --data_root ../shared/data/cifar10-jpeg
    python exercise1.py --k_folds 5 --subset 5000          # stratified 5-fold cross-validation
    python exercise1.py --resume runs/<run>/last.pt        # continue an interrupted run

A run folder SAVE_DIR/RUN_NAME holds config.json, command.txt, metrics.jsonl, best.pt, last.pt,
summary.json, curves.png and grads.png; its path is the last line printed.
"""
import argparse
import random
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from checkpoint import CheckpointError, load_checkpoint, load_weights
from cli import (Parser, add_data_args, add_model_args, add_optim_args, add_output_args, config_dict, data_config,
                 explicit_dests, from_dict, model_config, pos_int, run_main, timestamp, train_config)
from dataloader import DataConfig, load_dataset, make_loaders, stratified_kfold, stratified_subset
from engine import Diverged, TrainConfig, fit
from losses import CrossEntropy
from models import MODEL_NAMES, ModelConfig, build_model, count_params, is_cnn, summary
from plots import plot_curves, plot_grads
from tracking import UsageError, WandbLogger, create_run_dir, write_json, write_run_files


@dataclass(frozen=True)
class OutputConfig:
    save_dir: str = "runs"
    run_name: str = ""
    wandb: str = "auto"
    wandb_project: str = ""
    k_folds: int = 0


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    output: OutputConfig

    def to_dict(self):
        return config_dict(model=self.model, data=self.data, train=self.train, output=self.output)

    @classmethod
    def from_dict(cls, d):
        return cls(from_dict(ModelConfig, d["model"]), from_dict(DataConfig, d["data"]),
                   from_dict(TrainConfig, d["train"]), from_dict(OutputConfig, d["output"]))


def get_args_parser():
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Model")
    g.add_argument("--model", choices=MODEL_NAMES, default="FlexibleMLP", metavar="NAME",
                   help=f"one of {', '.join(MODEL_NAMES)} (default: FlexibleMLP)")
    add_model_args(g)
    add_data_args(p)
    add_optim_args(p)
    p._action_groups[-1].add_argument("--k_folds", type=pos_int, default=0, metavar="K",
                                      help="stratified K-fold cross-validation on the training set instead of one "
                                           "run (K >= 2; default: off)")
    add_output_args(p, "Lab1_DLA_MLP for MLPs, Lab1_DLA_CNN for CNNs")
    return p


def default_run_name(m, d, t):
    if m.name == "FlexibleMLP":
        arch = f"h{'-'.join(map(str, m.hidden_sizes))}" if m.hidden_sizes else f"d{m.depth}w{m.hidden_size}"
    elif m.name == "FlexibleCNN":
        arch = f"L{''.join(map(str, m.layers))}w{m.width}{m.block[0]}"
    else:
        arch = ""
    tags = [m.name, d.dataset, arch, "res" if m.residual else "", "" if m.norm == "none" else m.norm,
            f"{t.optimizer}{t.lr:g}", f"s{t.seed}", timestamp()]
    return "_".join(x for x in tags if x)


def build_config(args):
    dataset = args.dataset or ("cifar10" if is_cnn(args.model) else "mnist")
    if args.k_folds == 1:
        raise UsageError("--k_folds needs K >= 2")
    if args.early_stopping and args.val_split == 0 and not args.k_folds:
        raise UsageError("--early_stopping needs a validation split (--val_split > 0)")
    m, d, t = model_config(args, args.model), data_config(args, dataset), train_config(args)
    out = OutputConfig(save_dir=args.save_dir, run_name=args.run_name or "", wandb=args.wandb, k_folds=args.k_folds,
                       wandb_project=args.wandb_project or ("Lab1_DLA_CNN" if is_cnn(m.name) else "Lab1_DLA_MLP"))
    return RunConfig(m, d, t, out)


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def new_model(cfg: ModelConfig, ds, seed):
    """Seeded construction; invalid architecture values become a UsageError."""
    seed_everything(seed)
    try:
        return build_model(cfg, ds.in_shape, ds.num_classes)
    except (ValueError, KeyError) as e:
        raise UsageError(str(e)) from None


def arch_of(cfg: ModelConfig, ds, dataset):
    return {"model": asdict(cfg), "in_shape": list(ds.in_shape), "num_classes": ds.num_classes,
            "classes": list(ds.classes), "dataset": dataset, "is_cnn": is_cnn(cfg.name)}


def model_from_arch(arch):
    return build_model(from_dict(ModelConfig, arch["model"]), tuple(arch["in_shape"]), arch["num_classes"])


def train_model(model, ds, cfg: RunConfig, run_dir, loss_fn=None, logger=None, resume=None, desc="train",
                fold=None, quiet=False):
    """Train `model` with the one loop, test its best weights, and write summary.json and the plots."""
    loaders = make_loaders(ds, cfg.data, cfg.train.seed, cfg.train.device, fold,
                           channels_last=cfg.train.device.startswith("cuda") and is_cnn(cfg.model.name))
    meta = {"arch": arch_of(cfg.model, ds, cfg.data.dataset), "config": cfg.to_dict(),
            "wandb_id": logger.id if logger else None}
    result = fit(model, loaders, cfg.train, Path(run_dir), loss_fn or CrossEntropy(cfg.train.label_smoothing), meta,
                 logger, resume, desc, quiet)
    history = result.pop("history")
    preds = result.pop("test_preds")
    result = {"status": "finished", "model": cfg.model.name, "params": count_params(model), **result}
    write_json(Path(run_dir) / "summary.json", result)
    plot_curves(history, Path(run_dir) / "curves.png")
    plot_grads(history, Path(run_dir) / "grads.png")
    return {**result, "history": history, "test_preds": preds}


def resume_config(parser, args, argv):
    given = explicit_dests(parser, sys.argv[1:] if argv is None else argv)
    extra = given - {"resume", "epochs"}
    if extra:
        raise UsageError(f"--resume takes its settings from the checkpoint; only --epochs may be given beside it "
                         f"(got --{', --'.join(sorted(extra))})")
    ckpt = load_checkpoint(args.resume)
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{args.resume} holds weights only; resume from a run's last.pt")
    cfg = RunConfig.from_dict(ckpt["config"])
    if cfg.output.k_folds:
        raise UsageError("resuming a k-fold run is not supported; resume a single fold's last.pt instead")
    epochs = args.epochs if "epochs" in given else cfg.train.epochs
    if epochs < cfg.train.epochs:
        raise UsageError(f"--epochs {epochs} beside --resume may only extend the run's {cfg.train.epochs} epochs")
    return replace(cfg, train=replace(cfg.train, epochs=epochs)), ckpt


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.resume:
        cfg, ckpt = resume_config(parser, args, argv)
        run_dir = Path(args.resume).parent
    else:
        cfg, ckpt = build_config(args), None
    ds = load_dataset(cfg.data.dataset, cfg.data.data_root)
    if ckpt is not None:
        if ckpt["arch"]["num_classes"] != ds.num_classes or tuple(ckpt["arch"]["in_shape"]) != ds.in_shape:
            raise CheckpointError(f"{args.resume} was trained on data of another shape or class count")
        model = model_from_arch(ckpt["arch"])
        load_weights(model, ckpt, args.resume)
        print(f"resuming {run_dir} from epoch {ckpt['epoch']} of {cfg.train.epochs}")
    else:
        model = new_model(cfg.model, ds, cfg.train.seed)
        auto = not cfg.output.run_name
        run_dir = create_run_dir(cfg.output.save_dir, cfg.output.run_name or default_run_name(
            cfg.model, cfg.data, cfg.train), args.overwrite, auto_named=auto)
        cfg = replace(cfg, output=replace(cfg.output, run_name=run_dir.name))
        write_run_files(run_dir, cfg.to_dict())
    print(summary(cfg.model.name, model))
    print(f"data: {cfg.data.dataset} {tuple(ds.train_x.shape)} train, {tuple(ds.test_x.shape)} test, "
          f"{ds.num_classes} classes | device {cfg.train.device} | amp {cfg.train.amp}")
    logger = WandbLogger(cfg.output.wandb, cfg.output.wandb_project, run_dir.name, cfg.to_dict(),
                         resume_id=ckpt.get("wandb_id") if ckpt else None)
    try:
        if cfg.output.k_folds:
            result = cross_validate(ds, cfg, run_dir)
        else:
            result = train_model(model, ds, cfg, run_dir, logger=logger, resume=ckpt)
            print(f"test: loss {result['test_loss']:.4f} acc {result['test_acc']:.4f} (best epoch "
                  f"{result['best_epoch']}, val acc {result['best_val_acc'] or float('nan'):.4f}, "
                  f"{result['train_time_s']:.1f}s)")
            logger.log_images([run_dir / "curves.png", run_dir / "grads.png"])
        logger.finish({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    except Diverged as e:
        write_json(run_dir / "summary.json", {"status": "failed", "error": str(e)})
        logger.finish()
        raise
    except BaseException:
        logger.finish()
        raise
    print(run_dir)
    return 0


def cross_validate(ds, cfg: RunConfig, run_dir):
    """K stratified folds of the (subset) training set; per-fold and mean +- std validation accuracy."""
    k, seed = cfg.output.k_folds, cfg.train.seed
    y = ds.train_y[stratified_subset(ds.train_y, cfg.data.subset, seed)] if cfg.data.subset else ds.train_y
    accs = []
    for i, fold in enumerate(stratified_kfold(y, k, seed), start=1):
        fold_dir = run_dir / f"fold_{i}"
        fold_dir.mkdir()
        r = train_model(new_model(cfg.model, ds, seed), ds, cfg, fold_dir, desc=f"fold {i}/{k}", fold=fold)
        accs.append(r["best_val_acc"])
        print(f"fold {i}/{k}: best val acc {r['best_val_acc']:.4f} (epoch {r['best_epoch']})")
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    print(f"{k}-fold cross-validation: val acc {mean:.4f} ± {std:.4f}")
    result = {"status": "finished", "k_folds": k, "fold_val_acc": accs, "val_acc_mean": mean, "val_acc_std": std}
    write_json(run_dir / "summary.json", result)
    return result


if __name__ == "__main__":
    run_main(main)
