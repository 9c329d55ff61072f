"""A run's configuration: the frozen dataclasses one training is made of, and how flags build them.

Each flag is defined once, in its dataclass (models.ModelConfig, dataloader.DataConfig, engine.TrainConfig,
OutputConfig here); exercise1 and exercise2 add the same data, optimisation and output flags through
`add_run_flags`.
"""

import json
from dataclasses import dataclass, fields, replace

from dataloader import DataConfig
from device import make_autocast, resolve_amp, resolve_device
from errors import UsageError
from flags import (
    Distinct,
    add_flags,
    config_dict,
    count,
    flag,
    from_args,
    from_dict,
    nonempty,
    nonneg_int,
    pos_float,
    pos_int,
    pos_processes,
    unit,
)
from models import ModelConfig, model_dict
from optim import TrainConfig

COLOUR = ("cifar10", "cifar100", "folder")  # data sets augmented by default


@dataclass(frozen=True)
class OutputConfig:
    save_dir: str = flag("runs", "parent folder of run folders")
    run_name: str = flag("", "run folder name")
    wandb: str = flag(
        "auto",
        "W&B logging; auto = online when wandb has credentials, else offline",
        choices=("auto", "online", "offline", "disabled"),
    )
    wandb_project: str = flag("", "W&B project (WANDB_PROJECT when set)")
    wandb_log_model: str = flag(
        "off",
        "keep trained models in W&B as artifacts: best = best.pt at the end, all = also at every epoch that improved",
        choices=("off", "best", "all"),
    )
    keep_optimizer: bool = flag(
        False,
        "keep the optimizer's state in last.pt once the run has finished, so that a later --resume with a raised "
        "--epochs continues exactly as an uninterrupted longer run; without it the last epoch's last.pt leaves that "
        "state out (as large as the model, twice for Adam), and a raised --epochs starts it afresh",
    )


@dataclass(frozen=True)
class RunConfig:
    """One training run: what exercise1 trains, and each phase or child of the other commands."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    output: OutputConfig

    def to_dict(self):
        return config_dict(
            kind="exercise1", model=model_dict(self.model), data=self.data, train=self.train, output=self.output
        )

    @classmethod
    def from_dict(cls, d):
        return cls(
            from_dict(ModelConfig, d["model"]),
            from_dict(DataConfig, d["data"]),
            from_dict(TrainConfig, d["train"]),
            from_dict(OutputConfig, d["output"]),
        )


def add_run_flags(p, project_help, resume_help, skip=()):
    """Data, optimisation and output flags (both scripts take the same ones, but `skip`)."""
    g = p.add_argument_group("Data")
    add_flags(
        g,
        DataConfig,
        shown={"dataset": "mnist for FlexibleMLP, cifar10 for CNNs", "augment": "on for colour data, off for grey"},
        skip=skip,
    )
    g.add_argument("--no_augment", action="store_true", default=None, help="no augmentation (default: see --augment)")
    add_flags(p.add_argument_group("Optimisation"), TrainConfig)
    g = p.add_argument_group("Output")
    add_flags(g, OutputConfig, shown={"wandb_project": project_help, "run_name": "key flags + time stamp"})
    g.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace an existing run folder of the same name (default: off)",
    )
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        type=nonempty,
        help="start a new run with the settings of a lab1 config.json (a run folder's, or an edited copy); flags "
        "given beside it win, and the run gets a new name (default: the flags alone)",
    )
    g.add_argument("--resume", default=None, metavar="PATH", type=nonempty, help=f"{resume_help} (default: a new run)")
    g.add_argument(
        "--notify",
        choices=("telegram",),
        default=None,
        help="message at the end of a run or study, and "
        "on failure (Telegram: TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID; default: off)",
    )


def data_and_train(args, dataset):
    """DataConfig and TrainConfig from the flags (rules.check has seen them)."""
    augment = True if args.augment else False if args.no_augment else dataset in COLOUR
    device = resolve_device(args.device or "auto")
    train = from_args(TrainConfig, args, device=device, amp=resolve_amp(args.amp or "auto", device))
    return from_args(DataConfig, args, dataset=dataset, augment=augment), train


def check_batch_norm(batch_size, *norms):
    """Batch norm cannot train on batches of one example (each channel's variance would be 0)."""
    if batch_size == 1 and "batch" in norms:
        raise UsageError(
            "--batch_size 1 cannot train a model with batch norm (one example per batch has no "
            "variance): use --batch_size 2 or more, or --norm none"
        )


def differences(a, b, where="", skip=("train.epochs",)):
    """The dotted keys whose values differ between two configs (keys only one has, and `skip`, aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(a.keys() & b.keys())
            if where + k not in skip
            for d in differences(a[k], b[k], f"{where}{k}.", skip)
        ]
    same = json.dumps(a, default=repr) == json.dumps(b, default=repr)  # a tensor where a number belongs: differs
    return [] if same else [where.rstrip(".") or "all of it"]


STUDIES = ("mlp_depth", "cnn_depth")


DEFAULT_DEPTHS = {"mlp_depth": (2, 4, 8, 16, 32), "cnn_depth": (20, 32, 44, 56)}


# The model flags a study sets itself (cnn_depth: He et al.'s presets, as published).
MODEL_FLAGS_SET = {
    "mlp_depth": {"depth", "hidden_sizes", "skips", "residual"},
    "cnn_depth": {f.name for f in fields(ModelConfig)} - {"name"},
}


@dataclass(frozen=True)
class StudyConfig:
    study: str = flag(
        "",
        "mlp_depth: FlexibleMLP plain vs residual over --depths (MNIST); cnn_depth: He et al. "
        "plain vs ResNet over --depths (CIFAR-10). Leaves SAVE_DIR/<study>/",
        choices=STUDIES,
    )
    depths: tuple = flag((), "depths of the study", type=count, nargs="+", action=Distinct)
    seeds: tuple = flag(
        (),
        "train every configuration once per seed and report mean ± std (also without --study)",
        type=nonneg_int,
        nargs="+",
        action=Distinct,
    )
    workers: int = flag(
        1,
        "start N local worker processes that share the study (one child each at a time; CPU "
        "threads split between them, GPUs assigned round-robin)",
        type=pos_processes,
    )
    report: bool = flag(False, "rebuild the study's report from its folder (after, or during, the study)")


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
    baseline_dir: str = flag(
        "",
        "train the student baseline once into this folder, by whichever run gets there first, and reuse it in "
        "every later run of the same student, data and training settings (a T / alpha sweep's trials)",
        metavar="DIR",
    )
    teacher_logits: str = flag(
        "",
        "with --cache_teacher and --teacher_ckpt: reuse teacher_logits.pt of an earlier run "
        "(refused if it is of another teacher, data set or input normalisation)",
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


MODES = ("linear", "svm", "finetune", "scratch")


@dataclass(frozen=True)
class TransferConfig:
    pretrained: str = flag("", "a CNN checkpoint of exercise1 (its best.pt)", metavar="PATH")
    mode: str = flag(
        "all",
        "linear (logistic regression on frozen features), svm (linear SVM on them), finetune "
        "(end to end, new head), scratch (same network, random init), or all",
        choices=(*MODES, "all"),
    )
    backbone_lr_scale: float = flag(0.1, "finetune: backbone learning rate = --lr x this", type=pos_float)
    freeze_stages: int = flag(0, "finetune: keep the stem and the first N stages frozen", type=nonneg_int)
    pretrained_sha256: str = ""  # the fingerprint of --pretrained when the run started (inputs.py)


STUDENT_DEFAULTS = ModelConfig(name="FlexibleCNN", layers=(1, 1, 1, 1))


@dataclass(frozen=True)
class LaunchConfig:
    launcher: str = flag(
        "",
        "run each unfinished child as one job of a job array (slurm: submitit's SLURM executor; local: "
        "submitit's local executor, for tests)",
        choices=("local", "slurm"),
    )
    slurm_partition: str = flag("", "SLURM partition of the jobs (unset: the cluster's default)")
    slurm_time: int = flag(
        240, "time limit of each job in minutes; a child still training then is requeued and resumes", type=pos_int
    )
    slurm_gpus_per_task: int = flag(1, "GPUs of each job (0: CPU jobs)", type=nonneg_int)
    slurm_cpus_per_task: int = flag(8, "CPU cores of each job", type=pos_processes)
    slurm_mem: int = flag(32, "memory of each job in GB", type=pos_int)
    slurm_array_parallelism: int = flag(32, "at most this many jobs of the array run at once", type=pos_int)
    no_wait: bool = flag(False, "return once the jobs are submitted, printing the command that writes the report")
    retry_failed: bool = flag(
        False,
        "train the children that diverged or failed again (from their last.pt); otherwise a re-run keeps "
        "their outcome and the report lists them",
    )


SLURM_FLAGS = tuple(f for f in LaunchConfig.__dataclass_fields__ if f.startswith("slurm_"))


NOT_SAVED = ("launcher", *SLURM_FLAGS, "no_wait", "retry_failed")  # how to run, not what: allowed beside --resume
