"""Train and evaluate one MLP or CNN; every run leaves a folder that can rebuild it.

    python exercise1.py                                   # the default FlexibleMLP on MNIST
    python exercise1.py --model FlexibleMLP --epochs 50 --lr 1e-3 --batch_size 128 --hidden_size 128 \\
        --depth 20 --residual --norm --scheduler
    python exercise1.py --model FlexibleCNN --layers 2 2 2 2 --residual --norm --scheduler --dataset cifar10
    python exercise1.py --model resnet56 --dataset cifar10 --optimizer sgd --lr 0.1 --epochs 182
    python exercise1.py --model resnet20 --dataset folder --data_root ../shared/data/cifar10-jpeg
    python exercise1.py --k_folds 5 --subset 5000          # stratified 5-fold cross-validation
    python exercise1.py --resume runs/<run>/last.pt        # continue an interrupted run
    python exercise1.py --study mlp_depth --seeds 0 1 2    # plain vs residual MLPs over depth, mean ± std
    python exercise1.py --study cnn_depth --dataset folder --data_root ../shared/data/cifar10-jpeg
    torchrun --nproc_per_node 2 exercise1.py --model resnet20 --dataset cifar10   # data-parallel (DDP)

A run folder SAVE_DIR/RUN_NAME holds config.json, command.txt, metrics.jsonl, best.pt, last.pt,
summary.json, curves.png and grads.png; its path is the last line printed.
"""
import argparse
import json
import random
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import distributed
import study
from checkpoint import CheckpointError, load_checkpoint, load_weights
from cli import (Parser, add_data_args, add_model_args, add_optim_args, add_output_args, config_dict, data_config,
                 explicit_dests, from_dict, model_config, nonneg_int, pos_int, run_main, timestamp, train_config)
from dataloader import DataConfig, DataError, load_dataset, make_loaders, stratified_kfold, stratified_subset
from engine import Diverged, Interrupted, TrainConfig, channels_last_for, fit
from losses import CrossEntropy
from models import MODEL_NAMES, ModelConfig, build_model, count_params, is_cnn, summary
from notify import notify
from plots import plot_confusion, plot_curves, plot_grads
from tracking import UsageError, WandbLogger, create_run_dir, write_json, write_run_files


@dataclass(frozen=True)
class OutputConfig:
    save_dir: str = "runs"
    run_name: str = ""
    wandb: str = "auto"
    wandb_project: str = ""
    k_folds: int = 0
    notify: str = ""


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
    add_optim_args(p).add_argument("--k_folds", type=pos_int, default=0, metavar="K",
                                   help="stratified K-fold cross-validation on the training set instead of one "
                                        "run (K >= 2; default: off)")
    add_output_args(p, "Lab1_DLA_MLP for MLPs, Lab1_DLA_CNN for CNNs")
    g = p.add_argument_group("Studies", "many runs from one command; re-running the same command continues it")
    g.add_argument("--study", choices=study.STUDIES, default=None,
                   help="mlp_depth: FlexibleMLP plain vs residual over --depths (MNIST); cnn_depth: He et al. plain "
                        "vs ResNet over --depths (CIFAR-10). Leaves SAVE_DIR/<study>/")
    g.add_argument("--depths", type=pos_int, nargs="+", default=None,
                   help="depths of the study (default: 2 4 8 16 32 for mlp_depth, 20 32 44 56 for cnn_depth)")
    g.add_argument("--seeds", type=nonneg_int, nargs="+", default=None,
                   help="repeat every configuration with these seeds and report mean ± std (also without --study)")
    g.add_argument("--notify", choices=("telegram",), default=None,
                   help="message at the end of a run or study, and on failure (Telegram: TELEGRAM_BOT_TOKEN, "
                        "TELEGRAM_CHAT_ID)")
    return p


def default_run_name(m, d, t, stamp=True):
    if m.name == "FlexibleMLP":
        arch = f"h{'-'.join(map(str, m.hidden_sizes))}" if m.hidden_sizes else f"d{m.depth}w{m.hidden_size}"
    elif m.name == "FlexibleCNN":
        arch = f"L{''.join(map(str, m.layers))}w{m.width}{m.block[0]}"
    else:
        arch = ""
    tags = [m.name, d.dataset, arch, "res" if m.residual else "", "" if m.norm == "none" else m.norm,
            f"{t.optimizer}{t.lr:g}", f"s{t.seed}", timestamp() if stamp else ""]
    return "_".join(x for x in tags if x)


def build_config(args):
    dataset = args.dataset or ("cifar10" if is_cnn(args.model) or args.study == "cnn_depth" else "mnist")
    if args.study and args.k_folds or args.seeds and args.k_folds:
        raise UsageError("--k_folds cannot be combined with --study or --seeds")
    if args.k_folds == 1:
        raise UsageError("--k_folds needs K >= 2")
    if args.early_stopping and args.val_split == 0 and not args.k_folds:
        raise UsageError("--early_stopping needs a validation split (--val_split > 0)")
    m, d, t = model_config(args, args.model), data_config(args, dataset), train_config(args)
    out = OutputConfig(save_dir=args.save_dir, run_name=args.run_name or "", wandb=args.wandb, k_folds=args.k_folds,
                       notify=args.notify or "", wandb_project=args.wandb_project or (
                           "Lab1_DLA_CNN" if is_cnn(m.name) or args.study == "cnn_depth" else "Lab1_DLA_MLP"))
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


def arch_of(cfg: ModelConfig, ds, dataset, norm):
    """What a checkpoint needs to rebuild the model and feed it: also the input normalisation it was trained with."""
    return {"model": asdict(cfg), "in_shape": list(ds.in_shape), "num_classes": ds.num_classes,
            "classes": list(ds.classes), "dataset": dataset, "is_cnn": is_cnn(cfg.name), "input_norm": norm}


def model_from_arch(arch):
    return build_model(from_dict(ModelConfig, arch["model"]), tuple(arch["in_shape"]), arch["num_classes"])


def train_model(model, ds, cfg: RunConfig, run_dir, loss_fn=None, logger=None, resume=None, desc="train",
                fold=None, quiet=False, param_groups=None):
    """Train `model` with the one loop, test its best weights, and write summary.json and the plots."""
    loaders = make_loaders(ds, cfg.data, cfg.train.seed, cfg.train.device, fold,
                           channels_last=channels_last_for(cfg.train.device, is_cnn(cfg.model.name)),
                           shard=(distributed.rank(), distributed.world()))
    meta = {"arch": arch_of(cfg.model, ds, cfg.data.dataset, loaders.norm), "config": cfg.to_dict(),
            "wandb_id": logger.id if logger else None}
    result = fit(model, loaders, cfg.train, Path(run_dir), loss_fn or CrossEntropy(cfg.train.label_smoothing), meta,
                 logger, resume, desc, quiet, param_groups)
    history = result.pop("history")
    preds = result.pop("test_preds")
    k = ds.num_classes
    cm = torch.bincount(ds.test_y * k + preds, minlength=k * k).reshape(k, k)  # rows: true, columns: predicted
    per_class = (cm.diag() / cm.sum(1).clamp(min=1)).tolist()
    result = {"status": "finished", "model": cfg.model.name, "params": count_params(model), **result,
              "per_class_acc": dict(zip(ds.classes, per_class)), "confusion": cm.tolist()}
    if distributed.is_main():
        write_json(Path(run_dir) / "summary.json", result)
        plot_curves(history, Path(run_dir) / "curves.png")
        plot_grads(history, Path(run_dir) / "grads.png")
        plot_confusion(cm, ds.classes, Path(run_dir) / "confusion.png")
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


def run_single(cfg: RunConfig, ds, run_dir, model=None, ckpt=None, group=None):
    """One training run in run_dir (new, or continuing ckpt): W&B, training, test line. Returns the result."""
    if ckpt is not None:
        model = model_from_arch(ckpt["arch"])
        load_weights(model, ckpt, run_dir / "last.pt")
    model = model or new_model(cfg.model, ds, cfg.train.seed)
    print(summary(cfg.model.name, model))
    logger = WandbLogger(cfg.output.wandb if distributed.is_main() else "disabled", cfg.output.wandb_project,
                         run_dir.name, cfg.to_dict(), group=group, resume_id=ckpt.get("wandb_id") if ckpt else None)
    try:
        result = train_model(model, ds, cfg, run_dir, logger=logger, resume=ckpt)
    except BaseException as e:
        if isinstance(e, Diverged) and distributed.is_main():
            write_json(run_dir / "summary.json", {"status": "failed", "error": str(e)})
        logger.finish()
        raise
    print(f"test: loss {result['test_loss']:.4f} acc {result['test_acc']:.4f} (best epoch {result['best_epoch']}, "
          f"val acc {result['best_val_acc'] or float('nan'):.4f}, {result['train_time_s']:.1f}s)")
    logger.log_images([run_dir / "curves.png", run_dir / "grads.png", run_dir / "confusion.png"])
    logger.finish({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    return result


def _identity(plan):
    """What makes two studies the same: everything but where files live and how results are reported."""
    base = plan["base"]
    return {**plan, "base": {**base, "data": {k: v for k, v in base["data"].items() if k not in ("data_root", "num_workers")},
                             "output": {k: v for k, v in base["output"].items() if k not in (
                                 "save_dir", "wandb", "notify", "wandb_project")}}}


def run_multi(args, cfg: RunConfig, ds):
    """A study (--study) or one configuration over several --seeds, in one folder that a re-run continues."""
    seeds = args.seeds or [cfg.train.seed]
    depths = args.depths or (study.DEFAULT_DEPTHS[args.study] if args.study else ())
    kids = study.children(args.study, cfg, depths, seeds)
    name = cfg.output.run_name or args.study or default_run_name(cfg.model, cfg.data, cfg.train, stamp=False)
    study_dir = Path(cfg.output.save_dir) / name
    plan = {"study": args.study, "depths": list(depths), "seeds": list(seeds), "base": cfg.to_dict()}
    if (study_dir / "config.json").exists():
        if _identity(json.loads((study_dir / "config.json").read_text())) != _identity(json.loads(json.dumps(plan))):
            raise UsageError(f"{study_dir} holds another study or configuration; pass another --run_name "
                             "(or --overwrite to start it again)")
        print(f"continuing {study_dir}")
    else:
        study_dir = create_run_dir(cfg.output.save_dir, name, args.overwrite)
        write_run_files(study_dir, plan)

    def train_child(child, run_dir, resume):
        child_cfg = replace(child.cfg, output=replace(child.cfg.output, run_name=child.name))
        if resume is None:
            write_run_files(run_dir, child_cfg.to_dict())
        result = run_single(child_cfg, ds, run_dir, ckpt=resume, group=study_dir.name)
        return {k: v for k, v in result.items() if k not in ("history", "test_preds")}

    try:
        results = study.run_study(kids, study_dir, train_child)
    except Interrupted as e:
        raise Interrupted(str(e), hint="run the same command again to continue the study") from None
    rows = study.report(study_dir, args.study or name, kids, results)
    return study_dir, rows


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    distributed.setup()
    if distributed.world() > 1 and (args.study or args.seeds or args.k_folds):
        raise UsageError("under torchrun exercise1.py runs single trainings; run studies, --seeds and --k_folds "
                         "without it")
    if args.resume:
        cfg, ckpt = resume_config(parser, args, argv)
        run_dir = Path(args.resume).parent
    else:
        cfg, ckpt = build_config(args), None
    ds = load_dataset(cfg.data.dataset, cfg.data.data_root)
    print(f"data: {cfg.data.dataset} {tuple(ds.train_x.shape)} train, {tuple(ds.test_x.shape)} test, "
          f"{ds.num_classes} classes | device {cfg.train.device} | amp {cfg.train.amp}")
    label = args.study or (cfg.output.run_name or cfg.model.name)
    try:
        if not args.resume and (args.study or len(args.seeds or ()) > 1):
            run_dir, rows = run_multi(args, cfg, ds)
            best = max(rows, key=lambda r: r["test_acc_mean"])
            message = f"best {best['model']} {best['depth']}: test acc {best['test_acc_mean']:.4f}"
        else:
            model = None
            if ckpt is not None:
                if ckpt["arch"]["num_classes"] != ds.num_classes or tuple(ckpt["arch"]["in_shape"]) != ds.in_shape:
                    raise CheckpointError(f"{args.resume} was trained on data of another shape or class count")
                print(f"resuming {run_dir} from epoch {ckpt['epoch']} of {cfg.train.epochs}")
            else:
                model = new_model(cfg.model, ds, cfg.train.seed)  # a bad architecture fails before the folder exists
                run_dir = None
                if distributed.is_main():
                    run_dir = create_run_dir(cfg.output.save_dir, cfg.output.run_name or default_run_name(
                        cfg.model, cfg.data, cfg.train), args.overwrite, auto_named=not cfg.output.run_name)
                    write_run_files(run_dir, replace(cfg, output=replace(cfg.output, run_name=run_dir.name)).to_dict())
                run_dir = distributed.broadcast(run_dir)
                cfg = replace(cfg, output=replace(cfg.output, run_name=run_dir.name))
            if cfg.output.k_folds:
                result = cross_validate(ds, cfg, run_dir)
                message = f"{cfg.output.k_folds}-fold val acc {result['val_acc_mean']:.4f}"
            else:
                result = run_single(cfg, ds, run_dir, model, ckpt)
                message = f"test acc {result['test_acc']:.4f} in {result['train_time_s']:.0f}s"
    except (UsageError, DataError, CheckpointError):
        raise
    except BaseException as e:
        if cfg.output.notify and distributed.is_main():
            notify(cfg.output.notify, f"lab1 {label} failed: {type(e).__name__}: {e}")
        raise
    if cfg.output.notify and distributed.is_main():
        notify(cfg.output.notify, f"lab1 {label} finished: {message} ({run_dir})")
    print(run_dir)
    distributed.teardown()
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
