"""Transfer learning: reuse a CNN trained by exercise1 on a new data set, four ways, side by side.

    python exercise2.py --task finetune --pretrained runs/<run>/best.pt --dataset cifar100 --mode all

linear:   the frozen network's penultimate features -> standardised logistic regression (scikit-learn; probes.py)
svm:      the same features -> standardised linear SVM (scikit-learn); both with C chosen on the validation split
finetune: end to end with a new head; the backbone at lr * --backbone_lr_scale; --freeze_stages N keeps
          the stem and the first N stages fixed
scratch:  the same architecture from random weights with the same budget: what pretraining bought
"""

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import inputs
from checkpoint import FORMAT, load_checkpoint, model_from_arch, model_from_checkpoint, save_checkpoint
from config import MODES, OutputConfig, RunConfig, TransferConfig, data_and_train
from dataloader import DataConfig
from datasets import DataSet, load_dataset
from errors import CheckpointError, UsageError
from figures import plot_bars
from files import TEST_MARK, read_json, write_json, write_report
from flags import config_dict, from_args, from_dict
from models import ModelConfig, model_dict, summary
from optim import TrainConfig
from probes import cached_features, classical
from resume import extend_epochs, record_epochs
from run import describe_data, done, new_model, train
from rundir import check_run_dir, create_run_dir, short_name, timestamp, working_in
from tracking import data_name, project, transfer_logging
from wandb_reports import classical_to_wandb, transfer_to_wandb


def load_pretrained(path):
    """(model, arch) of a CNN checkpoint; one-line errors for anything else."""
    ckpt = load_checkpoint(path)
    arch = ckpt["arch"]
    if not arch.get("is_cnn"):
        raise CheckpointError(
            f"{path} is not a CNN checkpoint (it holds {arch['model'].get('name', '?')}); "
            "--task finetune needs a residual CNN trained by exercise1"
        )
    return model_from_checkpoint(path, ckpt), arch


def adapt_inputs(ds, in_shape):
    """Make ds's images fit a network trained on in_shape = (C, H, W): grey -> 3 channels, resize.

    Returns (DataSet, list of what was changed); works on the uint8 arrays once, before training.
    """
    c, h, w = in_shape
    changes = []
    have = ds.in_shape

    def convert(x):
        if x is None:
            return None
        if x.shape[1] != c:
            if x.shape[1] == 1 and c == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise UsageError(f"cannot adapt {x.shape[1]}-channel images to a network trained on {c} channels")
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False).round().clamp(0, 255)
        return x.to(torch.uint8).contiguous()

    if have[0] != c:
        changes.append(f"grey -> {c} channels" if have[0] == 1 else f"{have[0]} -> {c} channels")
    if have[1:] != (h, w):
        changes.append(f"resized {have[1]}x{have[2]} -> {h}x{w}")
    if not changes:
        return ds, changes
    return DataSet(
        convert(ds.train_x), ds.train_y, convert(ds.test_x), ds.test_y, ds.classes, convert(ds.val_x), ds.val_y
    ), changes


def prepare_finetune(model, num_classes, lr, backbone_lr_scale, freeze_stages):
    """New head; frozen stem + first `freeze_stages` stages; optimizer groups (head first: its lr is logged)."""
    model.head = nn.Linear(model.head.in_features, num_classes)
    n_stages = len(model.stages)
    if freeze_stages > n_stages:
        raise UsageError(f"--freeze_stages {freeze_stages}: the network has {n_stages} stages")
    frozen = [model.stem, *model.stages[:freeze_stages]] if freeze_stages else []
    for module in frozen:
        module.requires_grad_(False)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0  # running statistics stay as pretrained too
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    return [{"params": list(model.head.parameters()), "lr": lr}, {"params": backbone, "lr": lr * backbone_lr_scale}]


def report(results, run_dir, test_subset=0):
    """results.md (validation accuracy beside test; the C chosen for linear and svm), comparison.png, summary.json."""
    mark = TEST_MARK * bool(test_subset)
    lines = [f"| Mode | Val acc | Test acc{mark} | C | Train time (s) |", "|---|---|---|---|---|"]
    for m, r in results.items():
        val = r.get("val_acc", r.get("best_val_acc"))
        val, c = "-" if val is None else f"{val:.4f}", f"{r['C']:g}" if r.get("C") else "-"
        lines.append(f"| {m} | {val} | {r['test_acc']:.4f} | {c} | {r['train_time_s']:.1f} |")
    plot_bars(
        list(results),
        [r["test_acc"] for r in results.values()],
        [f"{r['train_time_s']:.0f}s" for r in results.values()],
        Path(run_dir) / "comparison.png",
        title=f"{Path(run_dir).name}: transfer, test accuracy{' (test subset)' if test_subset else ''}",
    )
    write_report(run_dir, results, lines, test_subset=test_subset)


def from_saved(saved):
    """The configs of a finetune run folder's config.json: data, train, transfer, output."""
    return (
        from_dict(DataConfig, saved["data"]),
        from_dict(TrainConfig, saved["train"]),
        from_dict(TransferConfig, saved["transfer"]),
        from_dict(OutputConfig, saved["output"]),
    )


def _from_flags(args):
    """The configs of a new finetune run: data, train, transfer, output."""
    dataset = args.dataset or "cifar100"
    data, train_cfg = data_and_train(args, dataset)
    tc = from_args(TransferConfig, args)
    default = f"finetune_{data_name(dataset, data.data_root)}"
    out = from_args(OutputConfig, args, wandb_project=project(args.wandb_project, default))
    check_run_dir(out.save_dir, args.run_name or "run", args.overwrite, not args.run_name, (tc.pretrained,))
    return data, train_cfg, tc, out


KEPT = "pretrained.pt"  # the run's own copy of the --pretrained network (inputs.py)


def main(args, run_dir=None, saved=None):
    """--task finetune (new, or continued with --resume RUN_DIR): each mode in its own sub-folder."""
    if saved is None:
        data, train_cfg, tc, out = _from_flags(args)
        source = tc.pretrained
    else:
        data, train_cfg, tc, out = from_saved(saved)
        train_cfg = extend_epochs(train_cfg, args.epochs, run_dir)
        source = inputs.source(run_dir, KEPT, tc.pretrained, tc.pretrained_sha256, "--pretrained")
    pretrained, arch = load_pretrained(source)
    if saved is None:
        tc = replace(tc, pretrained_sha256=inputs.fingerprint(source))
    mcfg = from_dict(ModelConfig, arch["model"])
    print(
        f"loading {data.dataset} (the pretrained network takes {'x'.join(map(str, arch['in_shape']))} inputs)",
        flush=True,
    )
    ds, changes = adapt_inputs(load_dataset(data.dataset, data.data_root), tuple(arch["in_shape"]))
    describe_data(ds, RunConfig(mcfg, data, train_cfg, out))
    if changes:
        print(f"adapting inputs to the pretrained network: {', '.join(changes)}")
    modes = MODES if tc.mode == "all" else (tc.mode,)
    if "finetune" in modes:
        prepare_finetune(model_from_arch(arch), ds.num_classes, 1.0, 1.0, tc.freeze_stages)  # validate
    print(f"pretrained {summary(mcfg.name, pretrained)} from {source}")
    if run_dir is None:
        out = replace(
            out, run_name=out.run_name or short_name(f"finetune_{data.dataset}_{mcfg.name}_{tc.mode}_{timestamp()}")
        )
        parts = {"transfer": tc, "input_changes": changes, "model": model_dict(mcfg), "data": data, "train": train_cfg}
        config = config_dict(kind="finetune", modes=list(modes), **parts, output=out)
        run_dir = create_run_dir(out.save_dir, out.run_name, config, args.overwrite, not args.run_name)
    working_in(run_dir)
    if not (run_dir / KEPT).exists():  # the network this run depends on, kept: a resume reads it
        save_checkpoint(run_dir / KEPT, {"format": FORMAT, "arch": arch, "model": pretrained.state_dict()})
    record_epochs(run_dir, saved, train_cfg.epochs)  # the data and the pretrained network loaded: --epochs is kept
    cfg = RunConfig(mcfg, data, train_cfg, out)
    results = {m: run_mode(m, tc, source, pretrained, ds, cfg, run_dir) for m in modes}
    report(results, run_dir, data.test_subset)
    transfer_to_wandb(results, run_dir, tc, cfg)
    done(run_dir)
    return 0


def run_mode(mode, tc, source, pretrained, ds, cfg, run_dir):
    """One transfer mode in run_dir/mode (skipped when finished); returns its result."""
    mode_dir = run_dir / mode
    if (mode_dir / "summary.json").exists() and read_json(mode_dir / "summary.json").get("status") == "finished":
        print(f"{mode}: finished earlier")
        return read_json(mode_dir / "summary.json")
    mode_dir.mkdir(exist_ok=True)
    if mode in ("linear", "svm"):
        splits = cached_features(pretrained, ds, cfg.data, cfg.train, run_dir, source, tc.pretrained_sha256)
        result = {"status": "finished", **classical(mode, splits, cfg.train.seed), "test_subset": cfg.data.test_subset}
        write_json(mode_dir / "summary.json", result)
        classical_to_wandb(cfg, run_dir, transfer_logging(run_dir, cfg, tc, mode), result)
        return result
    groups = None
    if mode == "finetune":
        model = load_pretrained(source)[0]
        torch.manual_seed(cfg.train.seed)  # the new head's initial weights: the same for the same --seed
        groups = prepare_finetune(model, ds.num_classes, cfg.train.lr, tc.backbone_lr_scale, tc.freeze_stages)
    else:
        model = new_model(cfg.model, ds, cfg.train.seed, cfg.train.device)
    r = train(
        model,
        ds,
        cfg,
        mode_dir,
        desc=mode,
        param_groups=groups,
        wandb=transfer_logging(run_dir, cfg, tc, mode),
    )
    return {
        k: r[k]
        for k in ("test_acc", "test_loss", "train_time_s", "best_val_acc", "params", "test_examples", "test_subset")
    }
