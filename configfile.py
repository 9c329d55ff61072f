"""--config FILE: a lab1 config.json (a run's, or an edited copy) as the settings of a new run. Its values become
the values of the flags the command line does not give, so flags given beside it win, and every check a typed flag
meets applies to them too. The run's name is not taken: a new run gets its own.

    python exercise1.py --config runs/<run>/config.json --lr 3e-3 --epochs 20
"""

import json
from dataclasses import asdict, fields
from pathlib import Path

from config import COLOUR, MODEL_FLAGS_SET, DistillConfig, OutputConfig, StudyConfig, TransferConfig
from dataloader import DataConfig
from errors import CheckpointError, UsageError
from files import read_json
from models import ModelConfig, unread_flags
from optim import TrainConfig
from rundir import KINDS, kind_of, script_of

# A flag typed beside --config replaces the file's values of the flags it cannot stand beside.
REPLACES = {
    "depth": ("hidden_sizes",),
    "hidden_size": ("hidden_sizes",),
    "hidden_sizes": ("depth", "hidden_size"),
    "k_folds": ("val_split",),
    "val_split": ("k_folds",),
    "seed": ("seeds",),
    "seeds": ("seed",),
    "augment": ("augment",),
    "no_augment": ("augment",),
}


def read(path, kinds, build):
    """The config.json at `path` (with its kind), of one of `kinds`, checked by build(config) as a resume checks
    its folder's: a value its flag would not take is one line."""
    saved = read_json(path, "--config file")
    kind = kind_of(saved) if isinstance(saved, dict) else None
    if kind not in KINDS or not {"data", "train", "output"} <= set(saved.get("base", saved)):
        raise CheckpointError(f"--config {path} is not a lab1 config.json (a run folder's config.json, or a copy)")
    if kind not in kinds:
        raise UsageError(f"--config {path} holds the settings of a {kind} run: start it with {script_of(kind)}")
    saved = {**saved, "kind": kind}
    try:
        build(saved)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"--config {path} is not a lab1 config.json ({type(e).__name__}: {str(e)[:100]})"
        ) from None
    return saved


# Flags whose default the script chooses (by model, by data set): the file's value is taken even where it is the
# field's default. Every other flag is set only where the file differs from its default, so that the checks on flags
# given together (the momentum of another optimizer, say) see what the file really asks for.
ALWAYS = {"dataset", "norm", "wandb_project"}


class Filler:
    """Fills the flags of `args` not typed (those typed are taken once, before any is filled)."""

    def __init__(self, args):
        self.args, self.typed = args, {k for k, v in vars(args).items() if v is not None}

    def replaced(self, prefix=""):
        """The flags whose file values the typed flags replace (a typed --optimizer adam: the file's momentum)."""
        typed = {k.removeprefix(prefix) for k in self.typed if k.startswith(prefix)}
        out = {r for k in typed for r in REPLACES.get(k, ())}
        out |= {"momentum"} if self.args.optimizer not in (None, "sgd") and "optimizer" in self.typed else set()
        return out | ({"num_workers"} if self.args.loader not in (None, "standard") else set())

    def fill(self, cls, values, prefix="", defaults=None, skip=()):
        """Each flag of dataclass `cls` from `values`, where not typed and not the flag's default."""
        base, skip = asdict(defaults or cls()), set(skip) | self.replaced(prefix)
        for f in fields(cls):
            name = prefix + f.name
            if "help" in f.metadata and f.name in values and f.name not in skip and name not in self.typed:
                if f.name in ALWAYS or values[f.name] != json.loads(json.dumps(base[f.name])):
                    setattr(self.args, name, values[f.name])

    def model(self, values, prefix="", name_flag="model", defaults=None, skip=()):
        """A model's flags and its name (unless `skip` holds "name"); under another typed name, only the fields that
        model reads."""
        if name_flag not in self.typed and "name" not in skip:
            setattr(self.args, name_flag, values.get("name"))
        name = getattr(self.args, name_flag) or values.get("name") or "FlexibleCNN"
        keep = {k: v for k, v in values.items() if not unread_flags(name, {k})}
        self.fill(ModelConfig, keep, prefix, defaults, skip)

    def run(self, saved):
        """The data, optimisation and output flags (not the run name)."""
        data = saved["data"]
        self.fill(DataConfig, data, skip=("augment",))
        if not {"augment", "no_augment"} & self.typed and isinstance(data.get("augment"), bool):
            if data["augment"] != ((self.args.dataset or data.get("dataset")) in COLOUR):  # not the default
                setattr(self.args, "augment" if data["augment"] else "no_augment", True)
        self.fill(TrainConfig, saved["train"])
        self.fill(OutputConfig, saved["output"], skip=("run_name",))


def apply_exercise1(args, build):
    """exercise1.py --config: a run's config.json, or a study's (its study, depths and seeds, and its base run)."""
    saved, f = read(Path(args.config), ("exercise1", "study"), build), Filler(args)
    skip = ()
    if saved["kind"] == "study":
        f.fill(StudyConfig, saved, skip=("workers", "report"))
        skip = MODEL_FLAGS_SET[saved["study"]] | {"name"} if saved["study"] else ()  # what the study sets itself
        saved = saved["base"]
    f.model(saved["model"], skip=skip)
    f.run(saved)


def apply_exercise2(args, build, student_defaults):
    """exercise2.py --config: a distillation run's config.json, or a finetune run's (then --task finetune)."""
    saved, f = read(Path(args.config), ("exercise2", "finetune"), build), Filler(args)
    if saved["kind"] == "finetune":
        args.task = "finetune"
        f.fill(TransferConfig, saved["transfer"])
    else:
        f.model(saved["teacher"], "t_", "teacher")
        f.model(saved["student"], "s_", "student", student_defaults)
        f.fill(DistillConfig, saved["distill"])
    f.run(saved)
