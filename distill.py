"""Knowledge distillation (Hinton et al. 2015) as three runs of the one loop: teacher, student alone, and the
same student (same initial weights) distilled; then the comparison.

The run folder holds a sub-folder per phase (exercise1's files), the published models teacher.pth,
student_baseline.pth and student_distill.pth (second names of each phase's best.pt), summary.json,
results.md, comparison.png and curves.png. A phase is finished when its summary.json says so; a resumed run
skips finished phases and continues an interrupted one from its last.pt.
"""

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import torch

import baseline
import eta
import study
from checkpoint import FORMAT, arch_of, load_checkpoint, load_file, load_weights, model_from_checkpoint, save_checkpoint
from config import ExperimentConfig
from dataloader import channel_stats, make_loaders
from device import make_autocast
from engine import evaluate
from errors import CheckpointError, UsageError
from files import RunLock, publish, read_json, read_jsonl
from flags import from_dict
from losses import DistillLoss, held_in_bf16
from models import ModelConfig, count_params, summary
from run import GIVEN_TEACHER_PREDICTIONS, loaders_for, new_model, save_predictions, tested_on, train
from rundir import finished
from splits import examples_tested, tested_indices, training_positions
from study import Child
from tracking import phase_logging


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
            tcfg = cfg.phase("teacher")
            train(teacher, ds, tcfg, folder / "teacher", desc="teacher", wandb=_wandb(folder, "teacher", cfg))
            publish(folder / "teacher" / "best.pt", folder / "teacher.pth")
    finally:
        lock.release()
    return replace(cfg, distill=replace(cfg.distill, teacher_ckpt=str(folder / "teacher.pth")))


def logits_key(teacher, ds, norm, cfg):
    """What a teacher-logits cache must match: the teacher's weights, the input normalisation it is run with, and the
    labels of the data set's whole training set, in order (the cache holds a row per training example)."""
    h = hashlib.sha256()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {
        "teacher": h.hexdigest()[:16],
        "dataset": cfg.data.dataset,
        "n": len(ds.train_y),
        "labels": hashlib.sha256(ds.train_y.numpy().tobytes()).hexdigest()[:16],
        "norm": [list(map(float, v)) for v in norm],
    }


def teacher_norm(ds, cfg):
    """The normalisation the teacher sees: its checkpoint's, else the channel statistics of the training split it
    was trained on (the run's own seed), as make_loaders computes them."""
    if cfg.data.norm:
        return cfg.data.norm
    mean, std = channel_stats(ds.train_x[training_positions(ds, cfg.data, cfg.train.seed)[0]])
    return tuple(mean.tolist()), tuple(std.tolist())


def _same_key(saved, key):
    """Keys agree exactly but for the normalisation, which agrees to float32 rounding: the channel statistics of one
    split differ in their last bits between thread counts (a study's jobs against the run that started them)."""
    if not isinstance(saved, dict) or set(saved) != set(key) or any(saved[k] != key[k] for k in key if k != "norm"):
        return False
    try:
        return torch.allclose(torch.tensor(saved["norm"]), torch.tensor(key["norm"]), rtol=1e-5, atol=0)
    except (TypeError, ValueError, RuntimeError):  # a norm of another shape or type: not this key
        return False


def check_logits(path, key, classes):
    """Refuse a --teacher_logits file of another teacher or data set (before anything is trained)."""
    cache = load_file(path, "teacher logits cache")
    logits = cache.get("logits") if isinstance(cache, dict) else None
    if not isinstance(cache, dict) or not _same_key(cache.get("key"), key) or not isinstance(logits, torch.Tensor):
        raise CheckpointError(
            f"teacher logits cache {path} belongs to another teacher, data set or input normalisation, is from an "
            "older lab1 (one row per example of one split), or is damaged"
        )
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
    return logits.detach().float()  # as computed here: float32, no autograd history (a file may hold either)


@torch.no_grad()
def teacher_logits(teacher, ds, cfg: ExperimentConfig, run_dir):
    """Teacher logits (N, classes) on the un-augmented examples of the data set's whole training set, in its order,
    so that one cache serves every seed's split and subset (logits_for). Kept in run_dir/teacher_logits.pt: the
    run's own (a resume reads it), else a copy of --teacher_logits, else computed here."""
    norm, given = teacher_norm(ds, cfg), cfg.distill.teacher_logits
    key, mine = logits_key(teacher, ds, norm, cfg), Path(run_dir) / "teacher_logits.pt"
    if mine.exists():
        try:
            logits = check_logits(mine, key, ds.num_classes)
            print(f"teacher logits: reusing {mine}")
            return logits
        except CheckpointError as e:  # damaged, or written by an older lab1: made again
            print(f"{e}; {'copying ' + given if given else 'computing it again'}")
    if given:
        logits, how = check_logits(given, key, ds.num_classes), f"copied from {given}"
    else:
        whole = replace(cfg.data, augment=False, subset=0, val_split=0.0, norm=norm)
        loader = make_loaders(ds, whole, cfg.train.seed, cfg.train.device).train
        teacher.eval()
        logits = torch.empty(len(ds.train_y), ds.num_classes, device=cfg.train.device)
        with cfg.teacher_autocast()():
            for batch in loader:  # with neither split nor subset, batch.idx are positions in the whole training set
                logits[batch.idx] = teacher(batch.x).float()
        logits, how = logits.cpu(), f"computed once for the {len(logits)} training images"
    save_checkpoint(mine, {"key": key, "logits": logits})
    print(f"teacher logits: {how} and kept in {mine}; the distilled students train on un-augmented data")
    return logits


def logits_for(cached, ds, pcfg):
    """The rows of the whole-training-set cache a student's loader indexes (batch.idx), for its seed's split."""
    return cached[training_positions(ds, pcfg.data, pcfg.train.seed)[0]].to(pcfg.train.device)


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


def run_phases(cfg, ds, run_dir, teacher, given, launcher=None, retry_failed=False):
    """The teacher (trained here, or given), then every student as a child of the study mechanism (claimed by
    one worker at a time, skipped when finished; with a launcher, one job each once the teacher is done);
    returns {name: result with test predictions}, or None when no report is due here (jobs submitted without
    waiting, or this process is the job of one student). With --seeds or a grid, a student that diverged or
    failed is {name: its outcome} and the others go on."""
    results = {"teacher": _teacher_phase(cfg, ds, run_dir, teacher, given)}
    teacher.to(cfg.train.device).eval().requires_grad_(False)
    cached = teacher_logits(teacher, ds, cfg, run_dir) if cfg.distill.cache_teacher else None
    kids = student_children(cfg)

    def train_child(child, child_dir, saved):  # a phase has no config.json of its own: saved is None
        c = child.cfg
        if child.kind == "student_baseline" and c.distill.baseline_dir:  # trained once for every run that shares it
            return baseline.share(c, ds, child.name, child_dir, _wandb(Path(c.distill.baseline_dir), child.name, c))
        model = new_model(c.student, ds, c.train.seed, c.train.device)  # the same initial weights for both students
        pcfg = c.phase(child.kind)
        mine = None if cached is None else logits_for(cached, ds, pcfg)
        loss_fn = distill_loss(c, teacher, mine) if child.kind == "student_distill" else None
        fresh[child.name] = train(
            model, ds, pcfg, child_dir, loss_fn, desc=child.name, wandb=_wandb(run_dir, child.name, c)
        )

    fresh, several = {}, bool(cfg.distill.seeds or cfg.distill.study)
    waited = study.work(
        kids,
        run_dir,
        train_child,
        write_config=False,
        isolate=several,
        retry_failed=retry_failed,
        launcher=launcher,
        cost=student_cost(cfg, ds),
    )
    if waited is False or study.assigned():
        return None
    for child in kids:
        results[child.name] = {**_student_result(child, run_dir, ds, fresh), "child": child}
    return results


def _teacher_phase(cfg, ds, run_dir, teacher, given):
    """The teacher's result: given, finished earlier, or trained here (published as run_dir/teacher.pth)."""
    tdir, tcfg = run_dir / "teacher", cfg.phase("teacher")
    if given:
        result = tested("teacher", teacher, ds, tcfg, run_dir / "teacher.pth", "given by --teacher_ckpt")
        y = examples_tested(ds, tcfg.data)[1]  # saved like a trained teacher's, for paired tests (plots.py pool)
        save_predictions(run_dir / GIVEN_TEACHER_PREDICTIONS, tested_indices(ds, tcfg.data), y, result["test_preds"])
        return result
    if finished(tdir):
        publish(tdir / "best.pt", run_dir / "teacher.pth")
        load_weights(teacher, load_checkpoint(run_dir / "teacher.pth")["model"], run_dir / "teacher.pth")
        return tested("teacher", teacher, ds, tcfg, tdir, "finished earlier", read_json(tdir / "summary.json"))
    tdir.mkdir(exist_ok=True)
    print("== teacher", flush=True)
    eta.later(sum(map(student_cost(cfg, ds), student_children(cfg))))  # the students after it
    result = train(teacher, ds, tcfg, tdir, desc="teacher", wandb=_wandb(run_dir, "teacher", cfg))
    eta.later(0)
    publish(tdir / "best.pt", run_dir / "teacher.pth")
    return result


def _student_result(child, run_dir, ds, fresh):
    """A student's result (its best.pt published as run_dir/NAME.pth): trained here, else tested now; a student
    that diverged or failed (isolated): its outcome, which the report lists."""
    child_dir, path = run_dir / child.name, run_dir / f"{child.name}.pth"
    if not finished(child_dir):
        return read_json(child_dir / "summary.json")
    publish(child_dir / "best.pt", path)
    if child.name in fresh:
        return fresh[child.name]
    model = model_from_checkpoint(path, load_checkpoint(path))  # finished earlier, or by another worker
    pcfg, saved = child.cfg.phase(child.kind), read_json(child_dir / "summary.json")
    return tested(child.name, model, ds, pcfg, child_dir, "finished earlier", saved)


_wandb = phase_logging  # the W&B arguments of a phase or student


def student_cost(cfg, ds):
    """child -> what training it costs (eta.py): a distilled student also runs the teacher forward on every batch,
    unless its logits are cached."""
    teacher = 0 if cfg.distill.cache_teacher else eta.params(cfg.teacher, tuple(ds.in_shape), ds.num_classes)
    return lambda c: eta.run_cost(c.cfg.phase(c.kind), ds, teacher * (c.kind == "student_distill"))


def tested(name, model, ds, pcfg, where, how, saved=None):
    """Test a model that is not trained here (given, or finished earlier): its predictions for the agreement."""
    model.to(pcfg.train.device)
    test = evaluate(
        model, loaders_for(ds, pcfg).test, make_autocast(pcfg.train), return_preds=True, desc=f"{name}: test"
    )
    on, y = tested_on(len(test["preds"]), pcfg.data.test_subset), examples_tested(ds, pcfg.data)[1]
    print(f"{name}: {how} ({where}); {on} loss {test['loss']:.4f} acc {test['acc']:.4f}")
    saved = saved or {}
    return {
        **saved,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "params": count_params(model),
        "train_time_s": saved.get("train_time_s", 0.0),
        "test_preds": test["preds"],
        "test_correct": test["preds"] == y,
        "history": saved.get("history") or _history(where),
    }


def _history(where):
    return read_jsonl(Path(where) / "metrics.jsonl") if Path(where).is_dir() else []
