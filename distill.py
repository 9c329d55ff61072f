"""Knowledge distillation (Hinton et al. 2015) as three runs of the one loop: teacher, student alone, and the
same student (same initial weights) distilled; then the comparison.

The run folder holds a sub-folder per phase (exercise1's files), the published models teacher.pth,
student_baseline.pth and student_distill.pth (second names of each phase's best.pt), summary.json,
results.md, comparison.png and curves.png. A phase is finished when its summary.json says so; a resumed run
skips finished phases and continues an interrupted one from its last.pt.
"""

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import eta
import study
from checkpoint import FORMAT, arch_of, load_checkpoint, load_file, load_weights, model_from_checkpoint, save_checkpoint
from config import OutputConfig, RunConfig
from dataloader import DataConfig, make_loaders
from engine import TrainConfig, evaluate, make_autocast
from errors import CheckpointError, UsageError
from figures import plot_bars, plot_heatmap, plot_overlay
from files import TEST_MARK, RunLock, publish, read_json, read_jsonl, write_report
from flags import Distinct, config_dict, flag, from_dict, nonneg_int, pos_float, unit
from losses import DistillLoss, held_in_bf16
from models import ModelConfig, count_params, model_dict, summary
from run import loaders_for, new_model, tested_on, train
from rundir import finished
from stats import format_mean_std, format_paired, gap_closed, mean_std, paired
from study import Child
from wandb_log import open_logger

PHASES = ("teacher", "student_baseline", "student_distill")


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = flag(4.0, "softmax temperature T", type=pos_float)
    alpha: float = flag(0.5, "weight of the soft (KL) term, in [0, 1]", type=unit)
    temperature_end: float = flag(None, "anneal T linearly to this value over the epochs", type=pos_float)
    alpha_end: float = flag(None, "anneal alpha linearly to this value over the epochs", type=unit)
    seeds: tuple = flag(
        (),
        "train the students (alone and distilled) once per seed against the one teacher; "
        "report mean ± std and the paired difference distilled - alone with a 95% CI",
        type=nonneg_int,
        nargs="+",
        action=Distinct,
    )
    study: str = flag(
        "",
        "kd_grid: one distilled student per --temperatures x --alphas (x --seeds), the teacher trained and cached once",
        choices=("kd_grid",),
    )
    temperatures: tuple = flag((), "kd_grid: the temperatures", type=pos_float, nargs="+", action=Distinct)
    alphas: tuple = flag((), "kd_grid: the alphas", type=unit, nargs="+", action=Distinct)
    cache_teacher: bool = flag(
        False,
        "compute the teacher's logits on the whole (un-augmented) training set once, "
        "keep them in the run folder, and train the distilled student on un-augmented data "
        "from them",
    )
    teacher_ckpt: str = flag(
        "",
        "reuse a trained teacher (teacher.pth of an earlier run, or an exercise1 best.pt); "
        "its architecture comes from the checkpoint and it is not trained again",
        metavar="PATH",
    )
    teacher_dir: str = flag(
        "",
        "train the teacher once into this folder, by whichever run gets there first, and "
        "reuse it from there in every later run (e.g. the runs of a W&B sweep)",
        metavar="DIR",
    )
    teacher_logits: str = flag(
        "",
        "with --cache_teacher and --teacher_ckpt: reuse teacher_logits.pt of an earlier run "
        "(refused if it is of another teacher or data set)",
        metavar="PATH",
    )
    teacher_amp: str = flag(
        "auto",
        "precision of the frozen teacher's forward that makes the soft targets; bf16 "
        "holds a bf16 copy of the teacher (faster on CPUs with native bf16: README); auto = as "
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
    )
    teacher_sha256: str = ""  # the fingerprint of --teacher_ckpt when the run started (inputs.py)


@dataclass(frozen=True)
class ExperimentConfig:
    teacher: ModelConfig
    student: ModelConfig
    distill: DistillConfig
    data: DataConfig
    train: TrainConfig
    output: OutputConfig

    def to_dict(self):
        return config_dict(
            kind="exercise2",
            teacher=model_dict(self.teacher),
            student=model_dict(self.student),
            **{k: getattr(self, k) for k in ("distill", "data", "train", "output")},
        )

    @classmethod
    def from_dict(cls, d):
        return cls(
            *(
                from_dict(c, d[k])
                for c, k in (
                    (ModelConfig, "teacher"),
                    (ModelConfig, "student"),
                    (DistillConfig, "distill"),
                    (DataConfig, "data"),
                    (TrainConfig, "train"),
                    (OutputConfig, "output"),
                )
            )
        )

    def teacher_autocast(self):
        """The autocast context of the frozen teacher's forward (its soft targets, on the fly or cached)."""
        amp = self.train.amp if self.distill.teacher_amp == "auto" else self.distill.teacher_amp
        return make_autocast(replace(self.train, amp=amp))

    def phase(self, name):
        """The RunConfig of one phase."""
        model = self.teacher if name == "teacher" else self.student
        data = (
            replace(self.data, augment=False) if name == "student_distill" and self.distill.cache_teacher else self.data
        )
        return RunConfig(model, data, self.train, self.output)


def given_teacher(path, ds, cfg, told=None):
    """(model, cfg with its architecture and input normalisation) of a trained teacher, checked against the data
    set it is to teach and against the teacher flags the user gave (`told`: ModelConfig field -> value)."""
    ckpt = load_checkpoint(path)
    arch = ckpt["arch"]
    if arch["num_classes"] != ds.num_classes or tuple(arch["in_shape"]) != ds.in_shape:
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on {arch['num_classes']} classes of "
            f"{tuple(arch['in_shape'])} inputs; this data set has {ds.num_classes} of {ds.in_shape}"
        )
    if arch.get("dataset") not in (None, cfg.data.dataset) or arch.get("classes") not in (None, list(ds.classes)):
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on another data set ({arch.get('dataset')}, "
            f"classes {arch.get('classes', [])[:3]}...); this run uses {cfg.data.dataset}"
        )
    saved = from_dict(ModelConfig, arch["model"])
    for k, mine in sorted((told or {}).items()):
        if mine != getattr(saved, k):
            show = lambda v: " ".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
            raise UsageError(
                f"--{'teacher' if k == 'name' else 't_' + k} {show(mine)} disagrees with the teacher in "
                f"{path} ({show(getattr(saved, k))}); leave it out: the teacher comes from its checkpoint"
            )
    cfg = replace(cfg, teacher=saved)
    if (norm := arch.get("input_norm")) and not cfg.data.norm:  # absent in checkpoints written before it was recorded
        # Every phase normalises as the teacher was trained, so it sees exactly its own inputs; the students
        # are trained from scratch and do not care whose split the statistics came from.
        cfg = replace(cfg, data=replace(cfg.data, norm=tuple(map(tuple, norm))))
    return model_from_checkpoint(path, ckpt), cfg


def shared_teacher(cfg, ds):
    """--teacher_dir: the teacher trained once into DIR and reused; a run that finds it in training waits."""
    folder = Path(cfg.distill.teacher_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--teacher_dir {folder} is a file; give a folder (made if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    while not (lock := RunLock(folder)).held:
        print(f"waiting for the teacher that another run trains in {folder}", flush=True)
        time.sleep(10)
    try:
        if not (folder / "teacher.pth").exists():
            teacher = new_model(cfg.teacher, ds, cfg.train.seed, cfg.train.device)
            (folder / "teacher").mkdir(exist_ok=True)
            print(f"== teacher (shared, in {folder}): {summary(cfg.teacher.name, teacher)}")
            train(
                teacher, ds, cfg.phase("teacher"), folder / "teacher", desc="teacher", wandb=_wandb(folder, "teacher")
            )
            publish(folder / "teacher" / "best.pt", folder / "teacher.pth")
    finally:
        lock.release()
    return replace(cfg, distill=replace(cfg.distill, teacher_ckpt=str(folder / "teacher.pth")))


def logits_key(teacher, ds, cfg):
    """What a teacher-logits cache must match: the teacher's weights and the training labels, in order."""
    h = hashlib.sha256()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    loaders = make_loaders(ds, replace(cfg.data, augment=False), cfg.train.seed, "cpu")
    return {
        "teacher": h.hexdigest()[:16],
        "dataset": cfg.data.dataset,
        "n": len(loaders.train_y),
        "labels": hashlib.sha256(loaders.train_y.numpy().tobytes()).hexdigest()[:16],
    }


def check_logits(path, key, classes):
    """Refuse a --teacher_logits file of another teacher or data set (before anything is trained)."""
    cache = load_file(path, "teacher logits cache")
    logits = cache.get("logits") if isinstance(cache, dict) else None
    if not isinstance(cache, dict) or cache.get("key") != key or not isinstance(logits, torch.Tensor):
        raise CheckpointError(f"teacher logits cache {path} belongs to another teacher or data set, or is damaged")
    if (
        logits.layout != torch.strided
        or logits.device.type != "cpu"
        or not logits.dtype.is_floating_point
        or tuple(logits.shape) != (key["n"], classes)
        or not torch.isfinite(logits).all()
    ):
        raise CheckpointError(
            f"teacher logits cache {path} is damaged (shape {tuple(logits.shape)} {logits.dtype} for "
            f"{key['n']} examples of {classes} classes, or values that are not finite)"
        )
    return logits


@torch.no_grad()
def teacher_logits(teacher, ds, cfg: ExperimentConfig, run_dir):
    """Teacher logits (N_train, classes) on the un-augmented training arrays, in loader index order; cached."""
    key = logits_key(teacher, ds, cfg)
    for source in (cfg.distill.teacher_logits, Path(run_dir) / "teacher_logits.pt"):
        if source and Path(source).exists():
            print(f"teacher logits: reusing {source}")
            return check_logits(source, key, ds.num_classes).to(cfg.train.device)
    loaders = make_loaders(ds, replace(cfg.data, augment=False), cfg.train.seed, cfg.train.device)
    teacher.eval()
    logits = torch.empty(len(loaders.train_y), ds.num_classes, device=cfg.train.device)
    with cfg.teacher_autocast()():
        for batch in loaders.train:
            logits[batch.idx] = teacher(batch.x).float()
    save_checkpoint(Path(run_dir) / "teacher_logits.pt", {"key": key, "logits": logits.cpu()})
    print(
        f"teacher logits: computed once for {len(logits)} training images and cached in "
        f"{Path(run_dir) / 'teacher_logits.pt'}; the distilled student trains on un-augmented data"
    )
    return logits


def distill_loss(cfg: ExperimentConfig, teacher, cached=None):
    """The distilled student's loss: soft targets from `cached` logits, else from the teacher on each batch
    (as a bf16 copy with --teacher_amp bf16: losses.held_in_bf16)."""
    d = cfg.distill
    if cached is not None:
        teacher = None
    elif d.teacher_amp == "bf16":
        teacher = held_in_bf16(teacher)
    return DistillLoss(
        d.temperature,
        d.alpha,
        d.temperature_end,
        d.alpha_end,
        cfg.train.label_smoothing,
        teacher=teacher,
        cached_logits=cached,
        autocast=cfg.teacher_autocast(),
    )


def publish_teacher(model, ds, cfg, run_dir, norm):
    """teacher.pth of a given teacher: its weights, architecture and normalisation (not its training state)."""
    save_checkpoint(
        run_dir / "teacher.pth",
        {"format": FORMAT, "model": model.state_dict(), "arch": arch_of(cfg.teacher, ds, cfg.data.dataset, norm)},
    )


def student_children(cfg):
    """The students: alone and distilled, once per seed (--seeds), and per (T, alpha) for --study kd_grid.
    Without --seeds or a grid they are the classic two phases, student_baseline and student_distill."""
    d = cfg.distill
    grid, seeds = d.study == "kd_grid", d.seeds or (cfg.train.seed,)
    kids = []
    for s in seeds:
        sfx = f"_seed{s}" if d.seeds or grid else ""
        seeded = replace(cfg, train=replace(cfg.train, seed=s))
        kids.append(Child(f"student_baseline{sfx}", "student_baseline", seeded, seed=s))
        for t in (d.temperatures or (d.temperature,)) if grid else (d.temperature,):
            for a in (d.alphas or (d.alpha,)) if grid else (d.alpha,):
                name = f"student_distill_T{t:g}_a{a:g}{sfx}" if grid else f"student_distill{sfx}"
                kids.append(
                    Child(name, "student_distill", replace(seeded, distill=replace(d, temperature=t, alpha=a)), seed=s)
                )
    return kids


def run_phases(cfg, ds, run_dir, teacher, given):
    """The teacher (trained here, or given), then every student as a child of the study mechanism (claimed by
    one worker at a time, skipped when finished); returns {name: result with test predictions}."""
    results = {}
    tdir, tcfg = run_dir / "teacher", cfg.phase("teacher")
    if given:
        results["teacher"] = tested("teacher", teacher, ds, tcfg, run_dir / "teacher.pth", "given by --teacher_ckpt")
    elif finished(tdir):
        publish(tdir / "best.pt", run_dir / "teacher.pth")
        load_weights(teacher, load_checkpoint(run_dir / "teacher.pth")["model"], run_dir / "teacher.pth")
        results["teacher"] = tested(
            "teacher", teacher, ds, tcfg, tdir, "finished earlier", read_json(tdir / "summary.json")
        )
    else:
        tdir.mkdir(exist_ok=True)
        print("== teacher", flush=True)
        eta.later(sum(map(student_cost(cfg, ds), student_children(cfg))))  # the students after it
        results["teacher"] = train(teacher, ds, tcfg, tdir, desc="teacher", wandb=_wandb(run_dir, "teacher"))
        eta.later(0)
        publish(tdir / "best.pt", run_dir / "teacher.pth")
    teacher.to(cfg.train.device).eval().requires_grad_(False)
    cached = teacher_logits(teacher, ds, cfg, run_dir) if cfg.distill.cache_teacher else None
    kids = student_children(cfg)

    def train_child(child, child_dir):
        c = child.cfg
        model = new_model(c.student, ds, c.train.seed, c.train.device)  # the same initial weights for both students
        loss_fn = distill_loss(c, teacher, cached) if child.kind == "student_distill" else None
        fresh[child.name] = train(
            model, ds, c.phase(child.kind), child_dir, loss_fn, desc=child.name, wandb=_wandb(run_dir, child.name)
        )

    fresh = {}
    study.work(kids, run_dir, train_child, write_config=False, cost=student_cost(cfg, ds))
    for child in kids:
        child_dir, path = run_dir / child.name, run_dir / f"{child.name}.pth"
        publish(child_dir / "best.pt", path)
        if child.name not in fresh:  # finished earlier, or by another worker: test it for the agreement
            model = model_from_checkpoint(path, load_checkpoint(path))
            fresh[child.name] = tested(
                child.name,
                model,
                ds,
                child.cfg.phase(child.kind),
                child_dir,
                "finished earlier",
                read_json(child_dir / "summary.json"),
            )
        results[child.name] = {**fresh[child.name], "child": child}
    return results


def student_cost(cfg, ds):
    """child -> what training it costs (eta.py): a distilled student also runs the teacher forward on every batch,
    unless its logits are cached."""
    teacher = 0 if cfg.distill.cache_teacher else eta.params(cfg.teacher, tuple(ds.in_shape), ds.num_classes)
    return lambda c: eta.run_cost(c.cfg.phase(c.kind), ds, teacher * (c.kind == "student_distill"))


def _wandb(run_dir, name):
    return {
        "group": run_dir.name,
        "job_type": name.split("_T")[0].split("_seed")[0],
        "prefix": f"{name}/",
        "name": f"{run_dir.name}-{name}",
    }


def tested(name, model, ds, pcfg, where, how, saved=None):
    """Test a model that is not trained here (given, or finished earlier): its predictions for the agreement."""
    model.to(pcfg.train.device)
    test = evaluate(
        model, loaders_for(ds, pcfg).test, make_autocast(pcfg.train), return_preds=True, desc=f"{name}: test"
    )
    on = tested_on(len(test["preds"]), pcfg.data.test_subset)
    print(f"{name}: {how} ({where}); {on} loss {test['loss']:.4f} acc {test['acc']:.4f}")
    saved = saved or {}
    return {
        **saved,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "params": count_params(model),
        "train_time_s": saved.get("train_time_s", 0.0),
        "test_preds": test["preds"],
        "history": saved.get("history") or _history(where),
    }


def _history(where):
    return read_jsonl(Path(where) / "metrics.jsonl") if Path(where).is_dir() else []


def report(results, cfg, run_dir):
    """summary.json, results.md and the figures: the classic three phases, or per seed and (T, alpha)."""
    if cfg.distill.seeds or cfg.distill.study:
        return report_multi(results, cfg, run_dir)
    teacher_preds = results["teacher"]["test_preds"]
    out = {}
    for name, r in results.items():
        out[name] = {
            k: r.get(k) for k in ("test_acc", "test_loss", "params", "train_time_s", "best_val_acc", "best_epoch")
        }
        if name != "teacher":
            out[name]["agreement_with_teacher"] = (r["test_preds"] == teacher_preds).float().mean().item()
    alone, teach = out["student_baseline"]["test_acc"], out["teacher"]["test_acc"]
    for name in PHASES[1:]:
        out[name]["gap_closed"] = gap_closed(out[name]["test_acc"], alone, teach)
    out["status"] = "finished"
    out["config"] = {
        "temperature": cfg.distill.temperature,
        "alpha": cfg.distill.alpha,
        "cache_teacher": cfg.distill.cache_teacher,
        "dataset": cfg.data.dataset,
    }
    n_test, subset = len(teacher_preds), cfg.data.test_subset
    out["test_examples"], out["test_subset"] = n_test, subset
    lines = [
        f"| Model | Params | Test acc{TEST_MARK * bool(subset)} | Test errors | Test loss | Train time (s) | "
        "Agreement with teacher | Gap closed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        r = out[name]
        agree = f"{r['agreement_with_teacher']:.4f}" if "agreement_with_teacher" in r else "-"
        gap = f"{r['gap_closed']:.1%}" if r.get("gap_closed") is not None else "-"
        lines.append(
            f"| {name} | {r['params']:,} | {r['test_acc']:.4f} | {round((1 - r['test_acc']) * n_test)} | "
            f"{r['test_loss']:.4f} | {r['train_time_s']:.1f} | {agree} | {gap} |"
        )
    plot_bars(
        list(PHASES),
        [out[n]["test_acc"] for n in PHASES],
        [f"{out[n]['params'] / 1e6:.2f}M params" for n in PHASES],
        run_dir / "comparison.png",
        title=f"{run_dir.name}: test accuracy",
    )
    plot_overlay(
        {n: results[n]["history"] for n in PHASES if results[n]["history"]},
        run_dir / "curves.png",
        title=f"{run_dir.name}: validation accuracy per phase",
    )
    write_report(run_dir, out, lines, test_subset=subset)
    logger = open_logger(
        cfg.phase("teacher"), run_dir, name=f"{run_dir.name}-summary", group=run_dir.name, job_type="summary"
    )
    if logger:
        logger.log_table(
            "results", lines[0].strip("|").split(" | "), [line.strip("| ").split(" | ") for line in lines[2:]]
        )
        logger.log_images([run_dir / "comparison.png", run_dir / "curves.png"])
        logger.finish({f"{n}/{k}": v for n in PHASES for k, v in out[n].items() if v is not None})
    return out


def report_multi(results, cfg, run_dir):
    """Students over seeds (and a T x alpha grid): mean ± std, paired distilled - alone, gap closed."""
    teacher = results["teacher"]
    per = {
        n: {
            "seed": r["child"].seed,
            "test_acc": r["test_acc"],
            "test_loss": r["test_loss"],
            "params": r["params"],
            "train_time_s": r["train_time_s"],
            "agreement_with_teacher": (r["test_preds"] == teacher["test_preds"]).float().mean().item(),
        }
        for n, r in results.items()
        if n != "teacher"
    }
    alone = {
        r["child"].seed: r["test_acc"]
        for r in results.values()
        if "child" in r and r["child"].kind == "student_baseline"
    }
    configs = {}
    for n, r in results.items():
        if n != "teacher" and r["child"].kind == "student_distill":
            d = r["child"].cfg.distill
            configs.setdefault((d.temperature, d.alpha), {})[r["child"].seed] = r["test_acc"]
    seeds = sorted(alone)
    rows, lines = (
        [],
        [
            f"| Students | T | alpha | Test acc{TEST_MARK * bool(cfg.data.test_subset)}"
            f"{' mean ± std' if len(alone) > 1 else ''} | Distilled - alone (paired) | Gap closed | Seeds |",
            "|---|---|---|---|---|---|---|",
        ],
    )
    m, sd = mean_std(alone.values())
    lines.append(f"| alone | - | - | {format_mean_std(m, sd, len(seeds))} | - | - | {len(seeds)} |")
    for (t, a), accs in sorted(configs.items()):
        pm, ps = mean_std(accs.values())
        p = paired([accs[s] for s in seeds], [alone[s] for s in seeds])
        gap = gap_closed(pm, m, teacher["test_acc"])  # from the table's means, so a reader can recompute it
        rows.append(
            {"temperature": t, "alpha": a, "test_acc_mean": pm, "test_acc_std": ps, "paired": p, "gap_closed": gap}
        )
        lines.append(
            f"| distilled | {t:g} | {a:g} | {format_mean_std(pm, ps, len(seeds))} | {format_paired(p)} | "
            f"{'-' if gap is None else f'{gap:.1%}'} | {len(seeds)} |"
        )
    out = {
        "status": "finished",
        "teacher": {k: teacher.get(k) for k in ("test_acc", "test_loss", "params", "train_time_s")},
        "student_baseline": {"test_acc_mean": m, "test_acc_std": sd},
        "student_distill": rows,
        "students": per,
        "seeds": seeds,
    }
    out.update(test_examples=len(teacher["test_preds"]), test_subset=cfg.data.test_subset)
    if len(rows) == 1:
        out["paired"], out["gap_closed"] = rows[0]["paired"], rows[0]["gap_closed"]
    text = [
        f"Teacher: test acc {teacher['test_acc']:.4f} ({round((1 - teacher['test_acc']) * len(teacher['test_preds']))}"
        " test errors)",
        "",
    ] + lines
    ts, als = sorted({t for t, _ in configs}), sorted({a for _, a in configs})
    if cfg.distill.study:
        grid = [[configs.get((t, a)) and mean_std(configs[(t, a)].values())[0] for a in als] for t in ts]
        plot_heatmap(
            grid,
            [f"T={t:g}" for t in ts],
            [f"alpha={a:g}" for a in als],
            run_dir / "comparison.png",
            f"{run_dir.name}: distilled student, {'mean ' * (len(seeds) > 1)}test accuracy (alone: {m:.4f})",
            "test accuracy",
        )
    else:
        plot_bars(
            ["teacher", "alone", "distilled"],
            [teacher["test_acc"], m, rows[0]["test_acc_mean"]],
            ["", f"± {sd:.4f}", f"± {rows[0]['test_acc_std']:.4f}"] if len(seeds) > 1 else ["", "", ""],
            run_dir / "comparison.png",
            title=f"{run_dir.name}: test accuracy (students: "
            f"{f'mean over {len(seeds)} seeds' if len(seeds) > 1 else f'seed {seeds[0]}'})",
        )
    write_report(run_dir, out, text, test_subset=cfg.data.test_subset)
    return out


__all__ = [
    "DistillConfig",
    "ExperimentConfig",
    "PHASES",
    "given_teacher",
    "logits_key",
    "check_logits",
    "teacher_logits",
    "distill_loss",
    "publish_teacher",
    "run_phases",
    "report",
]
