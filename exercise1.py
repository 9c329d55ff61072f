"""Train and evaluate one MLP or CNN; every run leaves a folder that can rebuild it.

    python exercise1.py                                   # the default FlexibleMLP on MNIST
    python exercise1.py --model FlexibleMLP --epochs 50 --lr 1e-3 --batch_size 128 --hidden_size 128 \\
        --depth 20 --residual --norm --scheduler
    python exercise1.py --model FlexibleCNN --layers 2 2 2 2 --residual --norm --scheduler --dataset cifar10
    python exercise1.py --model resnet56 --dataset cifar10 --optimizer sgd --lr 0.1 --epochs 182
    python exercise1.py --model resnet20 --dataset folder --data_root path/to/cifar10-jpeg
    python exercise1.py --k_folds 5 --subset 5000          # stratified 5-fold cross-validation
    python exercise1.py --resume runs/<run>                # continue an interrupted run (or study)
    python exercise1.py --config runs/<run>/config.json --lr 3e-3   # a new run with its settings, --lr changed
    python exercise1.py --evaluate runs/<run> --test_subset 500     # test its best.pt on 500 test examples
    python exercise1.py --study mlp_depth --seeds 0 1 2    # plain vs residual MLPs over depth, mean ± std
    python exercise1.py --study cnn_depth --dataset folder --data_root path/to/cifar10-jpeg --workers 2
    python exercise1.py --study cnn_depth --seeds 0 1 2 --launcher slurm   # one SLURM job per child
    torchrun --nproc_per_node 2 exercise1.py --model resnet20 --dataset cifar10   # data-parallel (DDP)

A run folder SAVE_DIR/RUN_NAME holds config.json, command.txt, metrics.jsonl, last.pt (the training state; once
finished, without the optimizer's unless --keep_optimizer), best.pt (the best-on-validation model), summary.json,
curves.png, grads.png and confusion.png; its path is the last line printed.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C while torch loads ends quietly; run_main then takes over

import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import configfile
import distributed
import eta
import evaluation
import launch
import rules
import study
from cli import run_main
from config import (
    DEFAULT_DEPTHS,
    NOT_SAVED,
    LaunchConfig,
    OutputConfig,
    RunConfig,
    StudyConfig,
    add_run_flags,
    check_batch_norm,
    data_and_train,
)
from datasets import load_dataset
from errors import UsageError
from files import read_json
from flags import Parser, add_flags, from_args, from_dict, given, nonempty
from models import MODEL_NAMES, ModelConfig, is_cnn, model_dict, summary
from notify import notify
from resume import extend_epochs, record_epochs, resume_dir
from run import check_model, describe_data, done, new_model, train
from rundir import check_run_dir, command, continue_with, create_run_dir, finished, short_name, timestamp, working_in
from tracking import child_logging, project


def get_args_parser():
    p = Parser(__doc__)
    g = p.add_argument_group("Model")
    g.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=None,
        metavar="NAME",
        help=f"one of {', '.join(MODEL_NAMES)} (default: FlexibleMLP)",
    )
    add_flags(g, ModelConfig, shown={"norm": "none for FlexibleMLP/FlexibleCNN; presets always use batch"})
    add_run_flags(
        p,
        "Lab1_DLA_MLP for MLPs, Lab1_DLA_CNN for CNNs",
        "continue an interrupted run or study from its folder (or its last.pt); settings come from the "
        "folder, and only --epochs may be raised beside it",
    )
    p.add_argument_group("Evaluation").add_argument(
        "--evaluate",
        default=None,
        metavar="PATH",
        type=nonempty,
        help="test a saved model (a run folder, its best.pt or last.pt) on the test split of --dataset / --data_root "
        "(default: the data set it was trained on) or --test_subset; prints loss, accuracy and per-class accuracy "
        "and writes nothing (default: train a model)",
    )
    add_flags(
        p.add_argument_group(
            "Studies",
            "many runs from one command; re-running the same command, or "
            "starting it again elsewhere on the same folder, continues it",
        ),
        StudyConfig,
        shown={"depths": "2 4 8 16 32 for mlp_depth, 20 32 44 56 for cnn_depth"},
    )
    add_flags(
        p.add_argument_group("Launcher", "a study's children as jobs of a job array (README: Across machines)"),
        LaunchConfig,
    )
    return p


MULTI = "--study, --seeds or --k_folds"  # what makes several children


def build_config(args):
    name = args.model or "FlexibleMLP"
    cnn = is_cnn(name) or args.study == "cnn_depth"
    dataset = args.dataset or ("cifar10" if cnn else "mnist")
    norm = args.norm or ("none" if name in ("FlexibleMLP", "FlexibleCNN") else "batch")
    rules.check(rules.typed(args, arch=name, arch_norm=norm), "exercise1", "run")
    data, train = data_and_train(args, dataset)
    check_batch_norm(data.batch_size, "batch" if args.study == "cnn_depth" else norm)
    out = from_args(
        OutputConfig, args, wandb_project=project(args.wandb_project, "Lab1_DLA_CNN" if cnn else "Lab1_DLA_MLP")
    )
    return RunConfig(from_args(ModelConfig, args, name=name, norm=norm), data, train, out)


def default_run_name(cfg):
    m, t = cfg.model, cfg.train
    if m.name == "FlexibleMLP":
        arch = f"h{'-'.join(map(str, m.hidden_sizes))}" if m.hidden_sizes else f"d{m.depth}w{m.hidden_size}"
    elif m.name == "FlexibleCNN":
        arch = f"L{''.join(map(str, m.layers))}w{m.width}{m.block[0]}"
    else:
        arch = ""
    tags = [
        m.name,
        cfg.data.dataset,
        arch,
        "res" if m.residual else "",
        "" if m.norm == "none" else m.norm,
        f"{t.optimizer}{t.lr:g}",
        f"s{t.seed}",
        timestamp(),
    ]
    return short_name("_".join(x for x in tags if x))


def study_plan(args, cfg):
    depths = tuple(args.depths or (DEFAULT_DEPTHS[args.study] if args.study else ()))
    return {
        "kind": "study",
        "study": args.study or "",
        "depths": list(depths),
        "seeds": list(args.seeds or (cfg.train.seed,)),
        "base": cfg.to_dict(),
    }


def run_study(plan, ds, study_dir, args):
    """A depth study, a seeds study, or the folds of a k-fold run: every child through run.train."""
    base = RunConfig.from_dict(plan["base"])
    kids = study.children(plan["study"], base, plan["depths"], plan["seeds"])

    def train_child(child, run_dir, saved):
        cfg = replace(child.cfg, output=replace(child.cfg.output, run_name=child.name))
        model = new_model(cfg.model, ds, cfg.train.seed, cfg.train.device)
        print(summary(cfg.model.name, model))
        wandb = child_logging(study_dir, child.kind, cfg, plan)
        r = train(model, ds, cfg, run_dir, desc=child.name, wandb=wandb, saved=saved)
        if child.kind == "fold":
            print(
                f"fold {child.fold}/{cfg.data.k_folds}: best val acc {r['best_val_acc']:.4f} (epoch {r['best_epoch']})"
            )

    title = plan["study"] or study_dir.name
    working_in(study_dir)
    how = from_args(LaunchConfig, args)
    jobs = launch.launcher(how, sys.argv[0], command("--resume", study_dir, "--report"))
    cost = lambda child: eta.run_cost(child.cfg, ds)  # noqa: E731  (weighs the time-left estimates)
    return study.run(
        kids, study_dir, title, train_child, args.workers or 1, bool(args.report), how.retry_failed, jobs, cost
    )


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.evaluate:
        return evaluation.main(args, given(args))
    if args.config and not args.resume:  # (beside --resume it is refused there, as any other setting)
        configfile.apply_exercise1(args, _config_of)
    if args.resume:  # a stop from here on, even while the data load, continues the same way
        continue_with(command("--resume", args.resume))
    return _main(args)


def _main(args):
    distributed.setup()
    multi = args.study or args.seeds or args.k_folds
    if distributed.world() > 1 and (multi or args.workers or args.launcher):
        raise UsageError(
            "under torchrun exercise1.py runs single trainings; run studies, --seeds and --k_folds "
            "without it (use --workers or --launcher for several processes)"
        )
    run_dir, plan, saved = None, None, None
    if args.resume:
        run_dir, cfg, plan, saved = resumed(args)
        if cfg is None:  # a finished run, and nothing to add
            done(run_dir)
            return 0
    else:
        cfg = build_config(args)
        plan = study_plan(args, cfg) if multi else None
        # A bad name or save_dir, or an existing folder, is said before the data load (a study's may be continued).
        check_run_dir(cfg.output.save_dir, args.run_name or "run", args.overwrite, not args.run_name or bool(plan))
    kids = study.children(plan["study"], cfg, plan["depths"], plan["seeds"]) if plan else []  # bad depths: now
    how = from_args(LaunchConfig, args)
    launch.check(how, vars(args), len(kids), args.workers or 1, cfg.train.device, MULTI)
    ds = load_dataset(cfg.data.dataset, cfg.data.data_root)
    describe_data(ds, cfg)
    if plan is not None:  # every model of the study fits, before its folder exists
        for model_cfg in {c.cfg.model for c in study.children(plan["study"], cfg, plan["depths"], plan["seeds"])}:
            check_model(model_cfg, ds, cfg.train.device)
    label = args.study or cfg.output.run_name or cfg.model.name
    try:
        run_dir, message = (_study if plan else _single)(args, cfg, plan, ds, run_dir, kids, saved)
    except BaseException as e:
        if args.notify and distributed.is_main():
            notify(args.notify, f"lab1 {label} failed: {type(e).__name__}: {e}")
        raise
    if args.notify and distributed.is_main():
        notify(args.notify, f"lab1 {label} finished: {message} ({run_dir})")
    done(None if os.environ.get(study.SPAWNED) else run_dir)  # the spawner prints the study's folder, once
    distributed.teardown()
    return 0


def _study(args, cfg, plan, ds, run_dir, kids, saved):
    """A study, --seeds or --k_folds in its folder (new, or continued): (folder, what it ended with)."""
    if run_dir is None:
        run_dir = study_folder(cfg, plan, args)
    if saved is not None:  # a resume: the children must check out before it records anything
        study.check_children(kids, run_dir)
    record_epochs(run_dir, saved, cfg.train.epochs)  # the data loaded and the children check out
    spawned = (args.workers or 1) > 1 and not args.report
    if spawned:
        working_in(run_dir)
        if args.retry_failed:  # here, once: the workers would race to forget the same failures
            study.retry(kids, run_dir)
        study.spawn_workers(args.workers, run_dir)  # they share the folder; one of them reports
    return run_dir, "finished by its workers" if spawned and finished(run_dir) else run_study(plan, ds, run_dir, args)


def _single(args, cfg, plan, ds, run_dir, kids, saved):
    """One run in its folder (new, or continued): (folder, its test result)."""
    model = new_model(cfg.model, ds, cfg.train.seed, cfg.train.device)  # fails before the folder exists
    print(summary(cfg.model.name, model))
    if run_dir is None and distributed.is_main():
        name = cfg.output.run_name or default_run_name(cfg)
        cfg = replace(cfg, output=replace(cfg.output, run_name=name))
        run_dir = create_run_dir(cfg.output.save_dir, name, cfg.to_dict(), args.overwrite, auto_named=not args.run_name)
    run_dir = distributed.broadcast(run_dir)
    working_in(run_dir)
    result = train(model, ds, cfg, run_dir, saved=saved)
    return run_dir, f"test acc {result['test_acc']:.4f} in {result['train_time_s']:.0f}s"


def resumed(args):
    """--resume RUN: (run folder, its RunConfig with a raised --epochs, the study plan or None, its config.json as
    read); cfg None for a finished single run that --epochs does not extend (its result is printed)."""
    run_dir, saved, cfg = resume_dir(
        args.resume,
        ("exercise1", "study"),
        given(args),
        ("resume", "epochs", "workers", "report", "notify", *NOT_SAVED),
        build=_config_of,
    )
    plan = saved if saved["kind"] == "study" else None
    rules.check(rules.typed(args, seeds=plan and plan["seeds"]), "exercise1")  # --workers, --report beside it
    if not plan and finished(run_dir) and args.epochs in (None, cfg.train.epochs):
        result = read_json(run_dir / "summary.json")
        print(
            f"{run_dir} finished earlier: test acc {result.get('test_acc')} (best epoch "
            f"{result.get('best_epoch')}); raise --epochs beside --resume to train it further"
        )
        return run_dir, None, None, saved
    cfg = replace(cfg, train=extend_epochs(cfg.train, args.epochs, run_dir if plan else None))
    return run_dir, cfg, {**plan, "base": cfg.to_dict()} if plan else None, saved


def _config_of(saved):
    """The RunConfig of a run's config.json, or of a study's (whose plan is checked as its flags would be)."""
    if saved["kind"] != "study":
        return RunConfig.from_dict(saved)
    study.check_plan(saved)
    return RunConfig.from_dict(saved["base"])


def study_folder(cfg, plan, args):
    """The study's folder: made, or continued when it holds the same study (also when another worker started
    the same command a moment before and made it first)."""
    kind = f"kfold{cfg.data.k_folds}" if cfg.data.k_folds else "seeds"  # a k-fold run and a seeds run never meet
    name = cfg.output.run_name or args.study or short_name(f"{default_run_name(cfg).rsplit('_', 1)[0]}_{kind}")
    try:
        return existing_study(cfg, name, plan, args) or create_run_dir(cfg.output.save_dir, name, plan, args.overwrite)
    except UsageError:
        found = existing_study(cfg, name, plan, args)
        if found is None:
            raise
        return found


def existing_study(cfg, name, plan, args):
    """A study folder of this name that holds the same study: continued (another worker, or a re-run)."""
    folder = Path(cfg.output.save_dir) / name
    if args.overwrite or not (folder / "config.json").exists():
        return None
    saved = read_json(folder / "config.json", "study config")
    if _identity(saved) != _identity(plan):
        raise UsageError(
            f"{folder} holds another study or configuration; pass another --run_name, or --overwrite to replace it"
        )
    print(f"continuing {folder}")
    return folder


def _identity(plan):
    """What makes two studies the same: everything but where files live and how results are reported."""
    plan = json.loads(json.dumps(plan))
    base = plan.get("base", {})
    # The model as config.json holds it now (its own fields), also where a study written before holds them all.
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
        base["model"] = model_dict(from_dict(ModelConfig, base["model"]))
    for part, keys in (
        ("data", ("data_root", "num_workers")),
        ("output", ("save_dir", "wandb", "wandb_project", "wandb_log_model")),
    ):
        for k in keys:
            base.get(part, {}).pop(k, None)
    return plan


if __name__ == "__main__":
    run_main(main)
