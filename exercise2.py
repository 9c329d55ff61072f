"""Knowledge distillation (Hinton et al. 2015): teacher, student alone, distilled student, compared.

    python exercise2.py --data_root ./data --save_dir ./distill_runs --epochs 50 --batch_size 128 --lr 1e-3 \\
        --t_layers 3 4 6 3 --s_layers 1 1 1 1 --use_skip --temperature 3.0 --alpha 0.5
    python exercise2.py --dataset mnist --teacher FlexibleMLP --t_hidden_sizes 1200 1200 --t_dropout 0.5 \\
        --student FlexibleMLP --s_hidden_sizes 800 800 --temperature 20 --augment     # Hinton et al.'s MNIST
    python exercise2.py --teacher resnet56 --student resnet20 --dataset folder --data_root path/to/cifar10-jpeg
    python exercise2.py --teacher_ckpt runs/<run>/best.pt --student resnet20 --cache_teacher
    python exercise2.py --resume distill_runs/<run>                              # skips finished phases
    python exercise2.py --task finetune --pretrained runs/<run>/best.pt --dataset cifar100 --mode all

Phases run in order, each in its own sub-folder with exercise1's files: teacher, student_baseline (hard
labels only) and student_distill (the same initial weights), whose loss is
    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The run folder also gets teacher.pth, student_baseline.pth, student_distill.pth (the phases' best models),
summary.json, results.md, comparison.png and curves.png; its path is the last line printed.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C while torch loads ends quietly; run_main then takes over

import sys
from dataclasses import replace

import configfile
import distill
import distill_report
import distributed
import inputs
import launch
import rules
import transfer
from cli import run_main
from config import (
    NOT_SAVED,
    STUDENT_DEFAULTS,
    DistillConfig,
    ExperimentConfig,
    LaunchConfig,
    OutputConfig,
    TransferConfig,
    add_run_flags,
    check_batch_norm,
    data_and_train,
)
from dataloader import make_loaders
from datasets import load_dataset
from device import resolve_amp
from errors import Diverged, UsageError
from files import RunLock, write_json
from flags import Parser, add_flags, from_args, given
from models import MODEL_NAMES, ModelConfig, is_cnn, summary
from resume import extend_epochs, record_epochs, resume_dir
from run import describe_data, done, new_model
from rundir import check_run_dir, command, continue_with, create_run_dir, short_name, timestamp, working_in
from tracking import data_name, project
from wandb_reports import distill_to_wandb


def get_args_parser():
    p = Parser(__doc__)
    p.add_argument(
        "--task",
        choices=("distill", "finetune"),
        default="distill",
        help="distill: teacher -> student; finetune: transfer a pretrained CNN to --dataset (default: distill)",
    )
    g = p.add_argument_group("Model", "teacher flags start with --t_, student flags with --s_")
    g.add_argument(
        "--teacher",
        choices=MODEL_NAMES,
        default=None,
        metavar="NAME",
        help=f"teacher model, one of {', '.join(MODEL_NAMES)} (default: FlexibleCNN)",
    )
    g.add_argument(
        "--student", choices=MODEL_NAMES, default=None, metavar="NAME", help="student model (default: FlexibleCNN)"
    )
    g.add_argument(
        "--use_skip",
        action="store_true",
        default=None,
        help="residual connections in both teacher and student: the same as --t_residual --s_residual "
        "(either form turns them on; default: off)",
    )
    norm = {"norm": "batch for CNNs, none for FlexibleMLP"}
    add_flags(g, ModelConfig, "t_", "teacher ", shown=norm)
    add_flags(g, ModelConfig, "s_", "student ", STUDENT_DEFAULTS, shown=norm)
    add_flags(
        p.add_argument_group("Distillation"),
        DistillConfig,
        shown={"temperature_end": "constant", "alpha_end": "constant"},
    )
    t = p.add_argument_group("Transfer (--task finetune)")
    add_flags(t, TransferConfig)
    add_run_flags(
        p,
        "distillation_<dataset>",
        "continue an interrupted run from its folder: finished phases are "
        "skipped, an interrupted phase continues from its last.pt; only --epochs may be raised beside it",
        skip=("k_folds",),
    )  # one validation split: the phases are compared on it
    add_flags(
        p.add_argument_group("Launcher", "the students of --seeds or a kd_grid as jobs (README: Across machines)"),
        LaunchConfig,
    )
    return p


def build_config(args):
    resolved = {}
    for p, name in (("t_", args.teacher), ("s_", args.student)):
        resolved[p + "arch"] = name = name or "FlexibleCNN"
        resolved[p + "arch_norm"] = getattr(args, p + "norm") or ("batch" if is_cnn(name) else "none")
    rules.check(rules.typed(args, **resolved), "exercise2", "run")
    dataset = args.dataset or "cifar10"

    def arch(p, default):
        cfg = from_args(ModelConfig, args, p, default, name=resolved[p + "arch"], norm=resolved[p + "arch_norm"])
        return replace(cfg, residual=True) if args.use_skip else cfg

    data, train = data_and_train(args, dataset)
    d = from_args(DistillConfig, args)
    if d.teacher_amp != "auto":
        d = replace(d, teacher_amp=resolve_amp(d.teacher_amp, train.device, "--teacher_amp"))
    default = f"distillation_{data_name(dataset, data.data_root)}"
    out = from_args(OutputConfig, args, wandb_project=project(args.wandb_project, default))
    teacher, student = arch("t_", None), arch("s_", STUDENT_DEFAULTS)
    check_batch_norm(data.batch_size, teacher.norm, student.norm)
    return ExperimentConfig(teacher, student, d, data, train, out)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if distributed.launched_by_torchrun():
        # Its phases and teacher caches are single-process; DDP is exercise1.py's (one training per command).
        raise UsageError(
            "exercise2.py runs in one process, not under torchrun; for several seeds or a kd_grid use --launcher, "
            "for one data-parallel model torchrun with exercise1.py"
        )
    run_dir, saved = None, None
    if args.config and not args.resume:  # (beside --resume it is refused there, as any other setting)
        configfile.apply_exercise2(args, _config_of, STUDENT_DEFAULTS)
    if args.resume:
        continue_with(command("--resume", args.resume))  # a stop from here on continues the same way
        run_dir, saved, cfg = resume_dir(
            args.resume,
            ("exercise2", "finetune"),
            given(args) - {"task"},
            ("resume", "epochs", *NOT_SAVED),
            build=_config_of,
        )
        if saved["kind"] == "finetune":
            _check_launch(args, None)
            return transfer.main(args, run_dir, saved)
        cfg = replace(cfg, train=extend_epochs(cfg.train, args.epochs, run_dir))
    elif args.task == "finetune":
        _check_launch(args, None)
        rules.check(rules.typed(args), "finetune", "run")
        return transfer.main(args)
    else:
        cfg = build_config(args)
        reads = (cfg.distill.teacher_ckpt, cfg.distill.teacher_logits)
        check_run_dir(cfg.output.save_dir, args.run_name or "run", args.overwrite, not args.run_name, reads)
    _check_launch(args, cfg)
    return _distil(args, cfg, run_dir, saved)


def _distil(args, cfg, run_dir, saved):
    """The teacher, then the students (alone and distilled), in run_dir (a new folder if None; saved: its
    config.json as read), then the report."""
    ds = load_dataset(cfg.data.dataset, cfg.data.data_root)
    seed = cfg.train.seed
    if cfg.distill.teacher_dir and not cfg.distill.teacher_ckpt:
        cfg = distill.shared_teacher(cfg, ds)
    teacher, given_ = None, bool(cfg.distill.teacher_ckpt)
    if given_:
        source, cfg = _teacher_source(run_dir, cfg)
        told = {
            "name" if k == "teacher" else k[2:]: args.teacher if k == "teacher" else getattr(cfg.teacher, k[2:])
            for k in given(args)
            if k == "teacher" or k.startswith("t_")
        }
        teacher, cfg = distill.given_teacher(source, ds, cfg, told)
    describe_data(ds, cfg.phase("teacher"))
    if cfg.distill.teacher_logits and not (run_dir and (run_dir / "teacher_logits.pt").exists()):  # else its copy
        key = distill.logits_key(teacher, ds, distill.teacher_norm(ds, cfg), cfg)
        distill.check_logits(cfg.distill.teacher_logits, key, ds.num_classes)
    teacher = teacher or new_model(cfg.teacher, ds, seed, cfg.train.device)
    student = new_model(cfg.student, ds, seed, cfg.train.device)  # the same initial weights for both students
    print(f"teacher {summary(cfg.teacher.name, teacher)}\nstudent {summary(cfg.student.name, student)}")
    if run_dir is None:
        d = cfg.distill
        what = "kd_grid" if d.study else f"T{d.temperature:g}_a{d.alpha:g}"
        name = cfg.output.run_name or short_name(
            f"distill_{cfg.data.dataset}_{cfg.teacher.name}-{cfg.student.name}_{what}_{timestamp()}"
        )
        cfg = replace(cfg, output=replace(cfg.output, run_name=name))
        run_dir = create_run_dir(cfg.output.save_dir, name, cfg.to_dict(), args.overwrite, auto_named=not args.run_name)
    working_in(run_dir)
    if given_ and not (run_dir / "teacher.pth").exists():
        distill.publish_teacher(teacher, ds, cfg, run_dir, make_loaders(ds, cfg.data, seed, "cpu").norm)
    record_epochs(run_dir, saved, cfg.train.epochs)  # the data and the teacher loaded: a raised --epochs is kept
    results = _phases(args, cfg, ds, run_dir, teacher, given_)
    if results is None:  # the students' jobs were submitted (--no_wait), or this is the job of one of them
        done(run_dir)
        return 0
    lock = RunLock(run_dir)  # several workers on one run: one of them writes the report at a time
    try:
        if lock.held:
            distill_to_wandb(distill_report.report(results, cfg, run_dir), results, cfg, run_dir)
        else:
            print("report: written by another worker")
    finally:
        lock.release()
    done(run_dir)
    return 0


def _phases(args, cfg, ds, run_dir, teacher, given_):
    """distill.run_phases, its students run as the launcher flags say; a diverged phase that stops the run (the
    teacher, or a phase of the classic three) says so in the run's summary.json too."""
    how = from_args(LaunchConfig, args)
    jobs = launch.launcher(how, sys.argv[0], command("--resume", run_dir))
    try:
        return distill.run_phases(cfg, ds, run_dir, teacher, given_, jobs, how.retry_failed)
    except Diverged as e:  # the phase's own summary says so too
        write_json(run_dir / "summary.json", {"status": "failed", "error": str(e)})
        raise


def _check_launch(args, cfg):
    """The launcher flags, refused in one line where they cannot work (before the data load); cfg None: finetune."""
    several = cfg is not None and bool(cfg.distill.seeds or cfg.distill.study)
    launch.check(
        from_args(LaunchConfig, args),
        vars(args),
        len(distill.student_children(cfg)) if several else 0,
        1,
        cfg.train.device if cfg else "cpu",
        "--seeds or --study kd_grid",
    )


def _config_of(saved):
    return transfer.from_saved(saved) if saved["kind"] == "finetune" else ExperimentConfig.from_dict(saved)


def _teacher_source(run_dir, cfg):
    """(the file a given teacher is read from, cfg with its fingerprint): a new run records the sha256 of
    --teacher_ckpt; a resumed one reads its own teacher.pth, or the original only while it is unchanged."""
    d = cfg.distill
    if run_dir is not None:
        return inputs.source(run_dir, "teacher.pth", d.teacher_ckpt, d.teacher_sha256, "--teacher_ckpt"), cfg
    return d.teacher_ckpt, replace(cfg, distill=replace(d, teacher_sha256=inputs.fingerprint(d.teacher_ckpt)))


if __name__ == "__main__":
    run_main(main)
