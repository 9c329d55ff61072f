"""What lab1 puts into W&B, and under which names: a run's settings as one flat config keyed by lab1's flag names,
its project and group, its epoch and step metrics and best-epoch summary, and its model artifacts and their lineage.

The config is flat so that a sweep's parameters (which are lab1's flags: `wandb agent` passes them as --name=value
and also merges them into the run's config, top level) and the run's own settings are one key, and unswept
settings stay visible beside them: --model is `model`, exercise2's --t_depth is `t_depth`, --temperature is
`temperature`. A few keys are not flags: `kind` (exercise1, exercise2, finetune, study), `phase` (an exercise2
phase or a transfer mode), `input_norm` (the data's normalisation when a teacher fixed it), `fold`, and the
artifacts a run used (`teacher_artifact`, `pretrained_artifact`).
"""

import dataclasses
import hashlib
import os
import re
import time
from pathlib import Path

from checkpoint import load_file
from errors import CheckpointError
from wandb_log import EPOCH, open_run

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEST_NAMES = {"test_acc": "test/acc", "test_loss": "test/loss"}  # named like train/ and val/


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def _section(obj, prefix="", name_key=None, renamed=None):
    out = {}
    for f in dataclasses.fields(obj):
        key = name_key if f.name == "name" and name_key else (renamed or {}).get(f.name, prefix + f.name)
        out[key] = _plain(getattr(obj, f.name))
    return out


def flat_config(cfg, kind=None, **extra):
    """Every resolved setting of a RunConfig (exercise1) or an ExperimentConfig (exercise2), keyed by its flag."""
    if hasattr(cfg, "distill"):
        parts = [_section(cfg.teacher, "t_", "teacher"), _section(cfg.student, "s_", "student"), _section(cfg.distill)]
    else:
        parts = [_section(cfg.model, name_key="model")]
    parts += [_section(cfg.data, renamed={"norm": "input_norm"}), _section(cfg.train), _section(cfg.output)]
    out = {"kind": kind or ("exercise2" if hasattr(cfg, "distill") else "exercise1")}
    for part in parts:
        if clash := out.keys() & part.keys():  # a programming error: two settings would share one key
            raise ValueError(f"W&B config keys {sorted(clash)} are used twice")
        out.update(part)
    return {**out, **extra}


def project(flag_value, default):
    """--wandb_project, else WANDB_PROJECT (`wandb agent` sets it to the sweep's project), else lab1's default."""
    return flag_value or os.environ.get("WANDB_PROJECT", "").strip() or default


def data_name(dataset, root):
    """The data's name in project names: the data set, or for an image folder CIFAR-10 when it holds CIFAR-10's
    classes (so it meets the sweep's distillation_cifar10), else the folder's own name."""
    if dataset != "folder":
        return dataset.replace("-", "_")
    try:
        classes = sorted(p.name for p in (Path(root) / "train").iterdir() if p.is_dir())
    except OSError:
        classes = []
    if tuple(classes) == CIFAR10_CLASSES:
        return "cifar10"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(root).resolve().name).strip("_.-")[:60] or "folder"


def group_of(folder):
    """The W&B group of a study's or experiment's folder: its name and a short hash of its absolute path, so two
    folders of one name (two --save_dir) never merge into one group."""
    folder = Path(folder).resolve()
    return f"{folder.name[:100]}-{hashlib.sha256(str(folder).encode()).hexdigest()[:6]}"


def open_logger(cfg, run_dir, resume_id=None, name=None, config=None, **kw):
    """The W&B run of one training (or summary) in run_dir; None when W&B is disabled."""
    o = cfg.output
    return open_run(
        o.wandb, o.wandb_project, name or Path(run_dir).name, config or flat_config(cfg), run_dir, resume_id, **kw
    )


def finish_logger(logger, summary):
    if logger:
        logger.finish(summary)


def wandb_record(rec):
    """metrics.jsonl record -> namespaced W&B keys on the epoch axis (train/loss, val/acc, lr, grad/<layer>)."""
    out = {EPOCH: rec["epoch"], "lr": rec["lr"], "epoch_time_s": rec["epoch_time_s"]}
    for k, v in rec.items():
        if v is None or k in out:
            continue
        if k == "grad_norm":
            out.update({f"grad/{layer}": g for layer, g in v.items()})
        elif k.startswith(("train_", "val_")):
            out["/".join(k.split("_", 1))] = v
        else:
            out[f"grad/{k}"] = v
    return out


def log_epoch(logger, rec, history, best_epoch):
    """The epoch's point, and the summary set to the best epoch's metrics (what a sweep ranks runs by)."""
    best = next((r for r in history if r["epoch"] == best_epoch), rec)
    logger.log_epoch(wandb_record(rec), {**wandb_record(best), "best_epoch": best_epoch})


class StepPoints:
    """engine.fit's on_step: the step's training loss and learning rate as batch/loss and batch/lr on the
    global_step axis, at each epoch's last step and otherwise at most one point every `interval` seconds, which
    keeps wandb's cost per point (0.15-4 ms measured on a busy CPU) under 1% of an epoch however short the steps
    are (bench/step_logging.py)."""

    def __init__(self, logger, interval=1.0):
        self.logger, self.interval, self.last = logger, interval, float("-inf")

    def __call__(self, epoch, step, steps, loss, lr):
        now = time.perf_counter()
        if step == steps or now - self.last >= self.interval:
            self.last = now
            self.logger.log_step(epoch * steps + step, {"loss": loss.item(), "lr": lr})


def run_summary(result):
    """A finished run's W&B summary: its scalars, the test results as test/acc and test/loss."""
    keep = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "best_val_acc"}
    return {TEST_NAMES.get(k, k): v for k, v in keep.items()}


# ---------------------------------------------------------------- model artifacts


def artifact_name(desc, run_id):
    """A model artifact's name: the phase or run kind (train, teacher, student_distill ...) and its W&B run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{desc}-{run_id}")


def log_model(logger, when, run_dir, desc, aliases, **metadata):
    """best.pt as a version of this run's model artifact, when --wandb_log_model (`when`) asks for it."""
    if logger and logger.id and when != "off" and (Path(run_dir) / "best.pt").exists():
        logger.log_model(Path(run_dir) / "best.pt", artifact_name(desc, logger.id), aliases, metadata)


def logged_model(path):
    """The W&B reference (PROJECT/NAME:best) of a model file that lab1 trained and logged with --wandb_log_model:
    a run's best.pt (its run folder beside it) or an exercise2 PHASE.pth (its PHASE/ folder); else None."""
    if not path:
        return None
    path = Path(path)
    folder = path.parent / path.stem if path.suffix == ".pth" else path.parent
    try:
        ckpt = load_file(folder / "last.pt", mmap=True)
        output = ckpt["config"]["output"]
    except (CheckpointError, LookupError, TypeError, AttributeError):  # not a run folder of lab1's
        return None
    if not ckpt.get("wandb_id") or output.get("wandb_log_model", "off") == "off":
        return None
    return f"{output['wandb_project']}/{artifact_name(ckpt.get('desc', 'train'), ckpt['wandb_id'])}:best"


# ---------------------------------------------------------------- the loggers of the parts of a command


def phase_logging(run_dir, name, cfg):
    """WandbLogger arguments of an exercise2 phase or student (name) of the experiment in run_dir: its own run in
    the folder's group (under a sweep agent, a prefix in the trial's run), the experiment's settings with the
    phase's data, and the teacher's artifact as the distilled student's input."""
    kind = name.split("_T")[0].split("_seed")[0]
    config = flat_config(dataclasses.replace(cfg, data=cfg.phase(kind).data), phase=kind)
    inputs = []
    if kind == "student_distill" and (ref := logged_model(cfg.distill.teacher_ckpt or Path(run_dir) / "teacher.pth")):
        config["teacher_artifact"], inputs = ref, [ref]
    return {
        "group": group_of(run_dir),
        "job_type": kind,
        "prefix": f"{name}/",
        "name": f"{Path(run_dir).name}-{name}",
        "config": config,
        "inputs": inputs,
    }


def child_logging(study_dir, kind, cfg, plan):
    """WandbLogger arguments of a study's child (its kind, its RunConfig): a run of the study's group, with the
    study's flags."""
    extra = {k: _plain(plan[k]) for k in ("study", "depths", "seeds")}
    return {"group": group_of(study_dir), "job_type": kind, "config": flat_config(cfg, **extra)}


def transfer_config(cfg, tc, mode):
    """The settings of a transfer mode: the data, optimisation and output flags, the pretrained network's
    architecture under exercise1's names, the transfer flags, and the pretrained network's artifact."""
    config = flat_config(cfg, kind="finetune", phase=mode, **dataclasses.asdict(tc))
    if ref := logged_model(tc.pretrained):
        config["pretrained_artifact"] = ref
    return config


def transfer_logging(run_dir, cfg, tc, mode):
    config = transfer_config(cfg, tc, mode)
    return {
        "group": group_of(run_dir),
        "job_type": mode,
        "prefix": f"{mode}/",
        "name": f"{Path(run_dir).name}-{mode}",
        "config": config,
        "inputs": [config["pretrained_artifact"]] if "pretrained_artifact" in config else [],
    }
