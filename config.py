"""A run's configuration: the frozen dataclasses one training is made of, and how flags build them.

Each flag is defined once, in its dataclass (models.ModelConfig, dataloader.DataConfig, engine.TrainConfig,
OutputConfig here); exercise1 and exercise2 add the same data, optimisation and output flags through
`add_run_flags`.
"""

import json
from dataclasses import dataclass

from dataloader import DataConfig
from engine import TrainConfig, resolve_amp, resolve_device
from errors import UsageError
from flags import add_flags, config_dict, flag, from_args, from_dict, nonempty
from models import ModelConfig, model_dict

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
    wandb_project: str = flag("", "W&B project")
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
    g.add_argument("--resume", default=None, metavar="PATH", type=nonempty, help=f"{resume_help} (default: a new run)")
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        type=nonempty,
        help="start a new run with the settings of a lab1 config.json (a run folder's, or an edited copy); flags "
        "given beside it win, and the run gets a new name (default: the flags alone)",
    )
    g.add_argument(
        "--notify",
        choices=("telegram",),
        default=None,
        help="message at the end of a run or study, and "
        "on failure (Telegram: TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID; default: off)",
    )


def data_and_train(args, dataset):
    """DataConfig and TrainConfig from the flags."""
    unread = [
        ("--augment and --no_augment", args.augment and args.no_augment, "give one of them"),
        (
            "--momentum",
            args.momentum is not None and (args.optimizer or TrainConfig.optimizer) != "sgd",
            "it is SGD's: add --optimizer sgd",
        ),
        (
            "--num_workers",
            args.num_workers is not None and (args.loader or DataConfig.loader) != "standard",
            "they are --loader standard's",
        ),
        (
            "--early_stopping",
            args.early_stopping and args.val_split == 0 and not getattr(args, "k_folds", 0),
            "it needs a validation split (--val_split > 0)",
        ),
    ]
    for name, wrong, why in unread:
        if wrong:
            raise UsageError(f"{name}: {why}")
    augment = True if args.augment else False if args.no_augment else dataset in COLOUR
    if (args.warmup_epochs or 0) >= (args.epochs or TrainConfig.epochs) and args.warmup_epochs:
        raise UsageError("--warmup_epochs must be shorter than --epochs (the learning rate would never peak)")
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
