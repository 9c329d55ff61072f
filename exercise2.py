"""Knowledge distillation (Hinton et al. 2015): teacher, student alone, distilled student, compared.

    python exercise2.py --data_root ./data --save_dir ./distill_runs --epochs 50 --batch_size 128 --lr 1e-3 \\
        --t_layers 3 4 6 3 --s_layers 1 1 1 1 --use_skip --temperature 3.0 --alpha 0.5
    python exercise2.py --dataset mnist --teacher FlexibleMLP --t_hidden_sizes 1200 1200 --t_dropout 0.5 \\
        --student FlexibleMLP --s_hidden_sizes 800 800 --temperature 20 --augment     # Hinton et al.'s MNIST
    python exercise2.py --teacher resnet56 --student resnet20 --dataset folder --data_root ../shared/data/cifar10-jpeg
    python exercise2.py --teacher_ckpt runs/<run>/best.pt --student resnet20 --cache_teacher
    python exercise2.py --resume distill_runs/<run>                              # skips finished phases
    python exercise2.py --task finetune --pretrained runs/<run>/best.pt --dataset cifar100 --mode all

Phases run in order, each in its own sub-folder with exercise1's files: teacher, student_baseline (hard
labels only) and student_distill, whose loss is
    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The run folder also gets teacher.pth, student_baseline.pth, student_distill.pth, summary.json, results.md,
comparison.png and curves.png; its path is the last line printed.
"""
import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
import distributed
import transfer
from cli import (Parser, add_data_args, add_model_args, add_optim_args, add_output_args, data_config, explicit_dests,
                 from_dict, model_config, nonneg_int, pos_float, resolve_amp, run_main, timestamp, train_config,
                 unit)
from dataloader import DataConfig, load_dataset, make_loaders
from engine import Interrupted, TrainConfig, evaluate, make_autocast
from exercise1 import OutputConfig, RunConfig, model_from_arch, new_model, train_model
from losses import DistillLoss, held_in_bf16
from models import MODEL_NAMES, ModelConfig, count_params, is_cnn, summary
from plots import plot_bars, plot_overlay
from tracking import UsageError, WandbLogger, create_run_dir, read_jsonl, write_json, write_run_files

PHASES = ("teacher", "student_baseline", "student_distill")
STUDENT_DEFAULTS = ModelConfig(name="FlexibleCNN", layers=(1, 1, 1, 1))


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.5
    temperature_end: float = 0.0     # 0 = constant
    alpha_end: float = -1.0          # -1 = constant
    cache_teacher: bool = False
    teacher_ckpt: str = ""
    teacher_logits: str = ""
    teacher_amp: str = ""            # precision of the teacher's soft targets: "" = as the student's amp, bf16 / off


@dataclass(frozen=True)
class ExperimentConfig:
    teacher: ModelConfig
    student: ModelConfig
    distill: DistillConfig
    data: DataConfig
    train: TrainConfig
    output: OutputConfig

    def to_dict(self):
        return {k: asdict(getattr(self, k)) for k in ("teacher", "student", "distill", "data", "train", "output")}

    @classmethod
    def from_dict(cls, d):
        return cls(from_dict(ModelConfig, d["teacher"]), from_dict(ModelConfig, d["student"]),
                   from_dict(DistillConfig, d["distill"]), from_dict(DataConfig, d["data"]),
                   from_dict(TrainConfig, d["train"]), from_dict(OutputConfig, d["output"]))

    def teacher_autocast(self):
        """The autocast context of the frozen teacher's forward (its soft targets, on the fly or cached)."""
        return make_autocast(replace(self.train, amp=self.distill.teacher_amp or self.train.amp))

    def phase(self, model, data=None):
        """The exercise1 RunConfig of one phase."""
        return RunConfig(model, data or self.data, self.train, self.output)


def get_args_parser():
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("distill", "finetune"), default="distill",
                   help="distill: teacher -> student; finetune: transfer a pretrained CNN to --dataset (default: distill)")
    g = p.add_argument_group("Model", "teacher flags start with --t_, student flags with --s_")
    g.add_argument("--teacher", choices=MODEL_NAMES, default="FlexibleCNN", metavar="NAME",
                   help=f"teacher model, one of {', '.join(MODEL_NAMES)} (default: FlexibleCNN)")
    g.add_argument("--student", choices=MODEL_NAMES, default="FlexibleCNN", metavar="NAME",
                   help="student model (default: FlexibleCNN)")
    g.add_argument("--use_skip", action="store_true",
                   help="residual connections in the FlexibleCNN/FlexibleMLP teacher and student")
    g.add_argument("--teacher_ckpt", default=None, metavar="PATH",
                   help="reuse a trained teacher (teacher.pth of an earlier run, or an exercise1 best.pt); its "
                        "architecture comes from the checkpoint and it is not trained again")
    add_model_args(g, "t_", "teacher ", norm_default="batch for CNNs, none for FlexibleMLP")
    add_model_args(g, "s_", "student ", STUDENT_DEFAULTS, norm_default="batch for CNNs, none for FlexibleMLP")
    d = p.add_argument_group("Distillation")
    d.add_argument("--temperature", type=pos_float, default=4.0, help="softmax temperature T (> 0; default: 4)")
    d.add_argument("--alpha", type=unit, default=0.5, help="weight of the soft (KL) term, in [0, 1] (default: 0.5)")
    d.add_argument("--temperature_end", type=pos_float, default=None,
                   help="anneal T linearly to this value over the epochs (default: constant)")
    d.add_argument("--alpha_end", type=unit, default=None,
                   help="anneal alpha linearly to this value over the epochs (default: constant)")
    d.add_argument("--cache_teacher", action="store_true",
                   help="compute the teacher's logits on the whole (un-augmented) training set once, keep them in "
                        "the run folder, and train the distilled student on un-augmented data from them")
    d.add_argument("--teacher_logits", default=None, metavar="PATH",
                   help="with --cache_teacher: reuse teacher_logits.pt of an earlier run (refused if it is of "
                        "another teacher or data set)")
    d.add_argument("--teacher_amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="precision of the frozen teacher's forward that makes the soft targets; bf16 (a bf16 copy of "
                        "the teacher) about halved that forward's cost on this project's AVX512-BF16 CPU (README); "
                        "auto = as --amp (default: auto)")
    t = p.add_argument_group("Transfer (--task finetune)")
    t.add_argument("--pretrained", default=None, metavar="PATH", help="a CNN checkpoint of exercise1 (best.pt)")
    t.add_argument("--mode", choices=(*transfer.MODES, "all"), default="all",
                   help="linear (logistic regression on frozen features), svm (linear SVM on them), finetune (end "
                        "to end, new head), scratch (same network, random init), or all (default: all)")
    t.add_argument("--backbone_lr_scale", type=pos_float, default=0.1,
                   help="finetune: backbone learning rate = --lr x this (default: 0.1)")
    t.add_argument("--freeze_stages", type=nonneg_int, default=0,
                   help="finetune: keep the stem and the first N stages frozen (default: 0)")
    add_data_args(p, "cifar10 for distill, cifar100 for finetune")
    add_optim_args(p)
    add_output_args(p, "distillation_<dataset>", resume_help="continue an interrupted run from its folder: "
                    "finished phases are skipped, an interrupted phase continues from its last.pt; only --epochs "
                    "may be raised beside it")
    return p


def build_config(args):
    if args.teacher_logits and not args.cache_teacher:
        raise UsageError("--teacher_logits needs --cache_teacher")
    dataset = args.dataset or "cifar10"
    if args.pretrained:
        raise UsageError("--pretrained belongs to --task finetune")

    def arch(name, prefix):
        cfg = model_config(args, name, prefix, flexible_norm="batch" if is_cnn(name) else "none")
        return replace(cfg, residual=True) if args.use_skip else cfg

    train = train_config(args)
    distill = DistillConfig(temperature=args.temperature, alpha=args.alpha,
                            temperature_end=args.temperature_end or 0.0,
                            alpha_end=-1.0 if args.alpha_end is None else args.alpha_end,
                            cache_teacher=args.cache_teacher, teacher_ckpt=args.teacher_ckpt or "",
                            teacher_logits=args.teacher_logits or "",
                            teacher_amp="" if args.teacher_amp == "auto" else
                            resolve_amp(args.teacher_amp, train.device, "--teacher_amp"))
    out = OutputConfig(save_dir=args.save_dir, run_name=args.run_name or "", wandb=args.wandb,
                       wandb_project=args.wandb_project or f"distillation_{dataset.replace('-', '_')}")
    return ExperimentConfig(arch(args.teacher, "t_"), arch(args.student, "s_"), distill, data_config(args, dataset),
                            train, out)


def load_teacher_ckpt(path, ds):
    """A trained teacher from a checkpoint, checked against the data set."""
    ckpt = load_checkpoint(path)
    arch = ckpt.get("arch") or {}
    if arch.get("num_classes") != ds.num_classes:
        raise CheckpointError(f"teacher checkpoint {path} was trained on {arch.get('num_classes')} classes; "
                              f"this data set has {ds.num_classes}")
    if tuple(arch.get("in_shape", ())) != ds.in_shape:
        raise CheckpointError(f"teacher checkpoint {path} expects inputs {tuple(arch.get('in_shape', ()))}, "
                              f"this data set has {ds.in_shape}")
    model = model_from_arch(arch)
    load_weights(model, ckpt, path)
    return model, ckpt


def weights_digest(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def teacher_logits(teacher, ds, cfg: ExperimentConfig, run_dir):
    """Teacher logits (N_train, classes) on the un-augmented training arrays, in loader index order; cached."""
    data = replace(cfg.data, augment=False)
    loaders = make_loaders(ds, data, cfg.train.seed, cfg.train.device)
    key = {"teacher": weights_digest(teacher), "dataset": data.dataset, "n": len(loaders.train_y),
           "labels": hashlib.sha256(loaders.train_y.numpy().tobytes()).hexdigest()[:16]}
    source = Path(cfg.distill.teacher_logits) if cfg.distill.teacher_logits else run_dir / "teacher_logits.pt"
    if source.exists():
        try:
            cache = torch.load(source, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"teacher logits cache {source} is corrupt") from None
        if cache.get("key") != key:
            raise CheckpointError(f"teacher logits cache {source} belongs to another teacher or data set; "
                                  "remove it or drop --teacher_logits")
        print(f"teacher logits: reusing {source}")
        return cache["logits"].to(cfg.train.device)
    elif cfg.distill.teacher_logits:
        raise CheckpointError(f"teacher logits cache {source} does not exist")
    teacher.eval()
    autocast = cfg.teacher_autocast()
    logits = torch.empty(len(loaders.train_y), ds.num_classes, device=cfg.train.device)
    for batch in loaders.train:
        with autocast():
            logits[batch.idx] = teacher(batch.x).float()
    save_checkpoint(run_dir / "teacher_logits.pt", {"key": key, "logits": logits.cpu()})
    print(f"teacher logits: computed once for {len(logits)} training images and cached in "
          f"{run_dir / 'teacher_logits.pt'}; the distilled student trains on un-augmented data")
    return logits


def distill_loss(cfg: ExperimentConfig, teacher, cached=None):
    """The distilled student's loss: soft targets from `cached` logits, else from the teacher on each batch.

    With --teacher_amp bf16 the teacher runs as a bf16 copy (see losses.held_in_bf16); with cached logits it does
    not run at all, so no copy is made.
    """
    d = cfg.distill
    if cached is not None:
        teacher = None
    elif d.teacher_amp == "bf16":
        teacher = held_in_bf16(teacher)
    return DistillLoss(d.temperature, d.alpha, d.temperature_end or None, None if d.alpha_end < 0 else d.alpha_end,
                       cfg.train.label_smoothing, teacher=teacher, cached_logits=cached,
                       autocast=cfg.teacher_autocast())


def resume_config(parser, args, argv):
    given = explicit_dests(parser, sys.argv[1:] if argv is None else argv)
    if given - {"resume", "epochs"}:
        raise UsageError("--resume takes its settings from the run folder; only --epochs may be given beside it")
    run_dir = Path(args.resume)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    if not (run_dir / "config.json").exists():
        raise UsageError(f"--resume {args.resume}: no exercise2 run folder (config.json missing)")
    try:
        cfg = ExperimentConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--resume {args.resume}: {run_dir / 'config.json'} is not an exercise2 config") from None
    if "epochs" in given:
        if args.epochs < cfg.train.epochs:
            raise UsageError(f"--epochs beside --resume may only extend the run's {cfg.train.epochs} epochs")
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    return cfg, run_dir


def run_phase(name, model, ds, cfg: RunConfig, run_dir, loss_fn=None, group=None):
    """Train one phase in run_dir/name (resuming its last.pt if there is one) and publish name.pth."""
    phase_dir = run_dir / name
    resume = None
    if (phase_dir / "last.pt").exists():
        resume = load_checkpoint(phase_dir / "last.pt")
        print(f"{name}: resuming from epoch {resume['epoch']}")
    phase_dir.mkdir(exist_ok=True)
    logger = WandbLogger(cfg.output.wandb, cfg.output.wandb_project, f"{run_dir.name}-{name}", cfg.to_dict(),
                         group=group, resume_id=resume.get("wandb_id") if resume else None)
    try:
        result = train_model(model, ds, cfg, phase_dir, loss_fn, logger, resume, desc=name)
    finally:
        logger.finish()
    shutil.copyfile(phase_dir / "best.pt", run_dir / f".{name}.pth.tmp")
    (run_dir / f".{name}.pth.tmp").replace(run_dir / f"{name}.pth")
    return result


def finished_phase(name, model, ds, cfg: RunConfig, run_dir, loaders, autocast):
    """A phase whose name.pth exists: reload and re-test it (nothing is trained)."""
    ckpt = load_checkpoint(run_dir / f"{name}.pth")
    load_weights(model, ckpt, run_dir / f"{name}.pth")
    model.to(cfg.train.device)
    test = evaluate(model, loaders.test, autocast, return_preds=True)
    print(f"{name}: finished earlier, test acc {test['acc']:.4f}")
    return {"test_acc": test["acc"], "test_loss": test["loss"], "params": count_params(model),
            "train_time_s": ckpt.get("elapsed", 0.0), "best_val_acc": ckpt.get("best_val_acc"),
            "history": read_jsonl(run_dir / name / "metrics.jsonl"), "test_preds": test["preds"]}


def run_finetune(args):
    """--task finetune: linear / svm / finetune / scratch on --dataset, from --pretrained; see transfer.py."""
    if not args.pretrained:
        raise UsageError("--task finetune needs --pretrained PATH (an exercise1 best.pt)")
    if args.resume:
        raise UsageError("--resume applies to --task distill; run the finetune command again instead")
    pretrained, arch = transfer.load_pretrained(args.pretrained)
    dataset = args.dataset or "cifar100"
    data, train = data_config(args, dataset), train_config(args)
    ds = load_dataset(dataset, data.data_root)
    ds, changes = transfer.adapt_inputs(ds, tuple(arch["in_shape"]))
    if changes:
        print(f"adapting inputs to the pretrained network: {', '.join(changes)}")
    modes = transfer.MODES if args.mode == "all" else (args.mode,)
    mcfg = from_dict(ModelConfig, arch["model"])
    if "finetune" in modes:
        transfer.prepare_finetune(model_from_arch(arch), ds.num_classes, 1.0, 1.0, args.freeze_stages)  # validate
    name = args.run_name or f"finetune_{dataset}_{mcfg.name}_{args.mode}_{timestamp()}"
    run_dir = create_run_dir(args.save_dir, name, args.overwrite, auto_named=not args.run_name)
    out = OutputConfig(save_dir=args.save_dir, run_name=run_dir.name, wandb=args.wandb,
                       wandb_project=args.wandb_project or f"finetune_{dataset.replace('-', '_')}")
    write_run_files(run_dir, {"task": "finetune", "pretrained": str(args.pretrained), "modes": list(modes),
                              "backbone_lr_scale": args.backbone_lr_scale, "freeze_stages": args.freeze_stages,
                              "input_changes": changes, "model": asdict(mcfg), "data": asdict(data),
                              "train": asdict(train), "output": asdict(out)})
    print(f"pretrained {summary(mcfg.name, pretrained)} from {args.pretrained}")
    results = {}
    splits = None
    for mode in modes:
        if mode in ("linear", "svm"):
            splits = splits or transfer.cached_features(pretrained, ds, data, train, run_dir, args.pretrained)
            acc, seconds = transfer.classical(mode, splits, train.seed)
            print(f"{mode}: test acc {acc:.4f} ({seconds:.1f}s)")
            results[mode] = {"test_acc": acc, "train_time_s": seconds}
            continue
        groups = None
        if mode == "finetune":
            model = transfer.load_pretrained(args.pretrained)[0]
            groups = transfer.prepare_finetune(model, ds.num_classes, train.lr, args.backbone_lr_scale,
                                               args.freeze_stages)
        else:
            model = new_model(mcfg, ds, train.seed)
        (run_dir / mode).mkdir()
        logger = WandbLogger(out.wandb, out.wandb_project, f"{run_dir.name}-{mode}", {"mode": mode},
                             group=run_dir.name)
        try:
            r = train_model(model, ds, RunConfig(mcfg, data, train, out), run_dir / mode, logger=logger, desc=mode,
                            param_groups=groups)
        finally:
            logger.finish()
        print(f"{mode}: test acc {r['test_acc']:.4f} ({r['train_time_s']:.1f}s)")
        results[mode] = {k: r[k] for k in ("test_acc", "test_loss", "train_time_s", "best_val_acc", "params")}
    transfer.report(results, run_dir)
    print(run_dir)
    return 0


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if distributed.launched_by_torchrun():
        # Its phases and teacher caches are single-process; DDP is exercise1.py's (one training per command).
        raise UsageError("exercise2.py runs in one process; for data-parallel training use torchrun with exercise1.py")
    if args.task == "finetune":
        return run_finetune(args)
    if args.resume:
        cfg, run_dir = resume_config(parser, args, argv)
    else:
        cfg, run_dir = build_config(args), None
    ds = load_dataset(cfg.data.dataset, cfg.data.data_root)
    seed = cfg.train.seed
    given_teacher = None
    if cfg.distill.teacher_ckpt:
        given_teacher, tckpt = load_teacher_ckpt(cfg.distill.teacher_ckpt, ds)
        cfg = replace(cfg, teacher=from_dict(ModelConfig, tckpt["arch"]["model"]))
        norm = tckpt["arch"].get("input_norm")  # absent in checkpoints written before it was recorded
        if norm and not cfg.data.norm:
            # Every phase normalises as the teacher was trained, so it sees exactly its own inputs; the students
            # are trained from scratch and do not care whose split the statistics came from.
            cfg = replace(cfg, data=replace(cfg.data, norm=tuple(map(tuple, norm))))
    teacher = given_teacher or new_model(cfg.teacher, ds, seed)
    new_model(cfg.student, ds, seed)  # fail on a bad student architecture before anything is written
    if run_dir is None:
        name = cfg.output.run_name or f"distill_{cfg.data.dataset}_{cfg.teacher.name}-{cfg.student.name}_" \
                                      f"T{cfg.distill.temperature:g}_a{cfg.distill.alpha:g}_{timestamp()}"
        run_dir = create_run_dir(cfg.output.save_dir, name, args.overwrite, auto_named=not cfg.output.run_name)
        cfg = replace(cfg, output=replace(cfg.output, run_name=run_dir.name))
        write_run_files(run_dir, cfg.to_dict())
        if given_teacher is not None:
            shutil.copyfile(cfg.distill.teacher_ckpt, run_dir / "teacher.pth")
    print(f"teacher {summary(cfg.teacher.name, teacher)}")
    loaders = make_loaders(ds, cfg.data, seed, cfg.train.device)
    autocast = make_autocast(cfg.train)
    results = {}
    try:
        for name in PHASES:
            model = teacher if name == "teacher" else new_model(cfg.student, ds, seed)  # same init for both students
            phase_cfg, loss_fn = cfg.phase(cfg.teacher if name == "teacher" else cfg.student), None
            if name == "student_distill":
                teacher.to(cfg.train.device).eval().requires_grad_(False)
                cached = teacher_logits(teacher, ds, cfg, run_dir) if cfg.distill.cache_teacher else None
                if cached is not None:
                    phase_cfg = cfg.phase(cfg.student, replace(cfg.data, augment=False))
                loss_fn = distill_loss(cfg, teacher, cached)
            if (run_dir / f"{name}.pth").exists():
                results[name] = finished_phase(name, model, ds, phase_cfg, run_dir, loaders, autocast)
            else:
                print(f"== {name}: {summary(phase_cfg.model.name, model)}")
                results[name] = run_phase(name, model, ds, phase_cfg, run_dir, loss_fn, group=run_dir.name)
    except Interrupted as e:
        raise Interrupted(str(e), run_dir) from None
    report(results, cfg, run_dir)
    print(run_dir)
    return 0


def report(results, cfg, run_dir):
    """summary.json, results.md, comparison.png and curves.png from the three phases' results."""
    teacher_preds = results["teacher"]["test_preds"]
    keys = ("test_acc", "test_loss", "params", "train_time_s", "best_val_acc")
    out = {}
    for name, r in results.items():
        out[name] = {k: r.get(k) for k in keys}
        if name != "teacher":
            out[name]["agreement_with_teacher"] = (r["test_preds"] == teacher_preds).float().mean().item()
    out["config"] = {"temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha,
                     "cache_teacher": cfg.distill.cache_teacher, "dataset": cfg.data.dataset}
    write_json(run_dir / "summary.json", out)
    n_test = len(teacher_preds)
    lines = ["| Model | Params | Test acc | Test errors | Test loss | Train time (s) | Agreement with teacher |",
             "|---|---|---|---|---|---|---|"]
    for name in PHASES:
        r = out[name]
        agree = f"{r['agreement_with_teacher']:.4f}" if "agreement_with_teacher" in r else "-"
        lines.append(f"| {name} | {r['params']:,} | {r['test_acc']:.4f} | {round((1 - r['test_acc']) * n_test)} | "
                     f"{r['test_loss']:.4f} | {r['train_time_s']:.1f} | {agree} |")
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_bars(list(PHASES), [out[n]["test_acc"] for n in PHASES], [f"{out[n]['params'] / 1e6:.2f}M params"
                                                                    for n in PHASES], run_dir / "comparison.png")
    plot_overlay({n: results[n]["history"] for n in PHASES if results[n]["history"]}, run_dir / "curves.png")


if __name__ == "__main__":
    run_main(main)
