"""Which flag needs, excludes or replaces which other, and which model reads which flag: every such rule of both
scripts in one table (RULES), checked by one function (`check`) for the flags a user typed and for the settings a
restored config.json holds.

A rule sees the settings as a namespace: each flag's value where it was set (typed, or in a config.json different
from its default), else None; `arch`/`arch_norm` (exercise2: `t_arch`, `s_arch_norm`, ...) are the model and norm
the command resolved. Rules are checked in table order and the first broken one is the message.
"""

from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Callable

from config import MODEL_FLAGS_SET, SLURM_FLAGS, STUDENT_DEFAULTS, DistillConfig, OutputConfig
from dataloader import DataConfig
from errors import UsageError
from models import PRESETS, ModelConfig, is_cnn, unread_flags
from optim import TrainConfig

MODEL_FLAGS = {f.name for f in fields(ModelConfig)}
DISTILL_FLAGS = {f.name for f in fields(DistillConfig)} | {"teacher", "student", "use_skip"}
FINETUNE_FLAGS = ("pretrained", "mode", "freeze_stages", "backbone_lr_scale")  # --task finetune's own


@dataclass(frozen=True)
class Rule:
    scope: str  # run: both scripts' data and training flags; exercise1; exercise2 (distillation); finetune
    says: str  # needs / excludes / applies to: the kind of rule
    broken: Callable[["Settings"], object]  # true when the settings break the rule
    message: object  # the one line: a str, or a function of the settings
    typed: bool = False  # about flags as typed only: a config.json holds every field, whatever set it


def _given_model(s, p=""):
    """The model flags set (exercise2: those of the teacher, t_, or of the student, s_)."""
    return {k for k in MODEL_FLAGS if getattr(s, p + k) is not None}


def _unread(p):
    """A role's model flags that its model never reads (a given teacher's are checked against its checkpoint)."""
    return lambda s: [] if p == "t_" and s.teacher_ckpt else unread_flags(getattr(s, p + "arch"), _given_model(s, p))


def _norm_rules(scope, p=""):
    arch, norm = (lambda s: getattr(s, p + "arch")), (lambda s: getattr(s, p + "arch_norm"))
    return (
        Rule(
            scope,
            "applies to",
            lambda s: arch(s) in PRESETS and norm(s) != "batch",
            lambda s: f"--{p}norm {norm(s)}: the {arch(s)} preset always uses batch norm",
        ),
        Rule(
            scope,
            "applies to",
            lambda s: is_cnn(arch(s)) and norm(s) == "layer",
            f"--{p}norm layer is for FlexibleMLP; CNNs take none or batch",
        ),
    )


def _role_rule(p, role):
    unread = _unread(p)
    return Rule(
        "exercise2",
        "applies to",
        unread,
        lambda s: f"--{p}{unread(s)[0]} does not apply to the {getattr(s, p + 'arch')} {role}",
        typed=True,
    )


def _study_clash(s):
    return ["model"] * bool(s.model) + sorted(_given_model(s) & MODEL_FLAGS_SET[s.study]) if s.study else []


def _slurm(s):
    return [f for f in SLURM_FLAGS if getattr(s, f) is not None]


def _distilling(s):
    return sorted(k for k, v in vars(s).items() if v is not None and (k in DISTILL_FLAGS or k.startswith(("t_", "s_"))))


RULES = (
    *_norm_rules("exercise1"),
    Rule(
        "exercise1",
        "excludes",
        lambda s: s.k_folds and (s.study or s.seeds),
        "--k_folds cannot be combined with --study or --seeds",
    ),
    Rule("exercise1", "needs", lambda s: s.k_folds == 1, "--k_folds needs K >= 2"),
    Rule("exercise1", "excludes", lambda s: s.seeds and s.seed is not None, "give either --seed or --seeds"),
    Rule("exercise1", "needs", lambda s: s.depths and not s.study, "--depths belongs to --study"),
    Rule(
        "exercise1",
        "excludes",
        _study_clash,
        lambda s: f"--study {s.study} chooses the models itself; leave out --{', --'.join(_study_clash(s))}",
    ),
    Rule("exercise1", "applies to", _unread(""), lambda s: f"--{_unread('')(s)[0]} does not apply to {s.arch}", True),
    Rule(
        "exercise1",
        "excludes",
        lambda s: s.hidden_sizes and (s.depth or s.hidden_size),
        "--hidden_sizes gives every width; leave out --depth and --hidden_size",
    ),
    Rule(
        "exercise1",
        "excludes",
        lambda s: s.k_folds and s.val_split is not None,
        "--k_folds replaces the validation split; leave out --val_split",
    ),
    Rule(
        "exercise1",
        "needs",
        lambda s: s.report and not (s.study or s.seeds or s.k_folds),
        "--report rebuilds a study's report: give the study's command or --resume STUDY_DIR",
    ),
    Rule(
        "exercise1",
        "needs",
        lambda s: (s.workers or 1) > 1 and not (s.study or s.seeds or s.k_folds),
        "--workers splits a study, --seeds or --k_folds; a single run has one worker",
    ),
    Rule(
        "exercise2",
        "excludes",
        lambda s: s.teacher_dir and s.teacher_ckpt,
        "give either --teacher_ckpt or --teacher_dir",
    ),
    Rule(
        "exercise2",
        "needs",
        lambda s: s.teacher_logits and not (s.cache_teacher and s.teacher_ckpt),
        "--teacher_logits needs --cache_teacher and --teacher_ckpt (the logits belong to a trained teacher)",
    ),
    Rule(
        "exercise2",
        "needs",
        lambda s: any(getattr(s, k) is not None for k in FINETUNE_FLAGS),
        "--pretrained, --mode, --freeze_stages and --backbone_lr_scale belong to --task finetune",
    ),
    Rule(
        "exercise2",
        "needs",
        lambda s: (s.temperatures or s.alphas) and s.study != "kd_grid",
        "--temperatures/--alphas: they belong to --study kd_grid",
    ),
    Rule(
        "exercise2",
        "needs",
        lambda s: s.study == "kd_grid" and not (s.temperatures or s.alphas),
        "--study kd_grid: give --temperatures and/or --alphas",
    ),
    Rule(
        "exercise2",
        "excludes",
        lambda s: s.study == "kd_grid" and s.temperature is not None and s.temperatures,
        "--temperature: --temperatures replace it",
    ),
    Rule(
        "exercise2",
        "excludes",
        lambda s: s.study == "kd_grid" and s.alpha is not None and s.alphas,
        "--alpha: --alphas replace it",
    ),
    _role_rule("t_", "teacher"),
    _role_rule("s_", "student"),
    *_norm_rules("exercise2", "t_"),
    *_norm_rules("exercise2", "s_"),
    Rule(
        "finetune",
        "excludes",
        _distilling,
        lambda s: f"--task finetune takes no distillation flags (got --{', --'.join(_distilling(s))})",
    ),
    Rule(
        "finetune",
        "needs",
        lambda s: not s.pretrained,
        "--task finetune needs --pretrained PATH (an exercise1 best.pt)",
    ),
    Rule(
        "finetune",
        "applies to",
        lambda s: (
            (s.mode or "all") not in ("finetune", "all") and (s.freeze_stages, s.backbone_lr_scale) != (None, None)
        ),
        lambda s: f"--freeze_stages and --backbone_lr_scale belong to the finetune mode, not --mode {s.mode}",
    ),
    Rule(
        "launch",
        "needs",
        lambda s: _slurm(s) and s.launcher != "slurm",
        lambda s: f"--{_slurm(s)[0]} sizes SLURM jobs: give it with --launcher slurm",
    ),
    Rule(
        "launch",
        "needs",
        lambda s: s.no_wait and not s.launcher,
        "--no_wait belongs to --launcher (without it the study runs in this process)",
    ),
    Rule(
        "launch",
        "excludes",
        lambda s: s.launcher and s.workers > 1,
        "--launcher runs every child as its own job; leave out --workers",
    ),
    Rule(
        "launch",
        "needs",
        lambda s: s.launcher and s.children < 2,
        lambda s: f"--launcher runs the children of a study as jobs; give {s.studies} for several children",
    ),
    Rule("run", "excludes", lambda s: s.augment and s.no_augment, "--augment and --no_augment: give one of them"),
    Rule(
        "run",
        "needs",
        lambda s: s.momentum is not None and (s.optimizer or TrainConfig.optimizer) != "sgd",
        "--momentum: it is SGD's: add --optimizer sgd",
    ),
    Rule(
        "run",
        "needs",
        lambda s: s.num_workers is not None and (s.loader or DataConfig.loader) != "standard",
        "--num_workers: they are --loader standard's",
    ),
    Rule(
        "run",
        "needs",
        lambda s: s.early_stopping and s.val_split == 0 and not s.k_folds,
        "--early_stopping: it needs a validation split (--val_split > 0)",
    ),
    Rule(
        "run",
        "needs",
        lambda s: s.warmup_epochs and s.warmup_epochs >= (s.epochs or TrainConfig.epochs),
        "--warmup_epochs must be shorter than --epochs (the learning rate would never peak)",
    ),
)


def check(settings, *scopes, restored=False):
    """Raise UsageError with the first rule of `scopes` that the settings break (restored: of a config.json)."""
    for rule in RULES:
        if rule.scope in scopes and not (restored and rule.typed) and rule.broken(settings):
            raise UsageError(rule.message(settings) if callable(rule.message) else rule.message)


class Settings(SimpleNamespace):
    """What a rule sees; an absent flag reads as None (not given)."""

    def __getattr__(self, name):
        return None


def typed(args, **resolved):
    """The settings of a command line (argparse leaves every flag not typed None) and what the command resolved."""
    return Settings(**{**vars(args), **resolved})


def restored(config):
    """The settings of a config.json: its values that differ from their defaults, by flag name (a model section
    under its prefix: exercise2's teacher as t_, its student as s_)."""
    out = {}
    sections = {"model": ("", ModelConfig()), "teacher": ("t_", ModelConfig()), "student": ("s_", STUDENT_DEFAULTS)}
    sections |= {"data": ("", DataConfig()), "train": ("", TrainConfig()), "output": ("", OutputConfig())}
    sections |= {"distill": ("", DistillConfig())}
    for key, (p, defaults) in sections.items():
        section = config.get(key) or {}
        for f in fields(defaults):
            default = getattr(defaults, f.name)
            value = section.get(f.name, default)
            if value != default and not (isinstance(default, tuple) and list(default) == value):
                out[p + f.name] = value
        if isinstance(defaults, ModelConfig) and key in config:
            out[p + "arch"], out[p + "arch_norm"] = section.get("name"), section.get("norm")
    return Settings(**out)
