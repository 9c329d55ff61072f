"""Command-line plumbing shared by exercise1.py and exercise2.py.

Flags are parsed once into argparse's namespace, turned into frozen dataclasses here, and only those are
passed down: models, loaders and the training loop never see `args`.
"""
import argparse
import sys
import time
from dataclasses import asdict, fields

import torch

from checkpoint import CheckpointError
from dataloader import DATASETS, DataConfig, DataError
from engine import Diverged, Interrupted, TrainConfig
from models import ACTIVATIONS, BLOCKS, MODEL_NAMES, NORMS, ModelConfig, is_cnn
from tracking import UsageError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: ... (see --help)`, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(cast, ok, what):
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


pos_int = _checked(int, lambda v: v > 0, "a positive integer")
nonneg_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
pos_float = _checked(float, lambda v: v > 0 and v < float("inf"), "a positive number")
nonneg_float = _checked(float, lambda v: 0 <= v < float("inf"), "a non-negative number")
fraction = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
unit = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def skip_pair(text):
    try:
        target, source = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"skip {text!r} is not TARGET:SOURCE (e.g. 2:0)") from None
    if not 0 <= source < target:
        raise argparse.ArgumentTypeError(f"skip {text!r} needs 0 <= SOURCE < TARGET")
    return target, source


def add_model_args(group, prefix="", who="", defaults=ModelConfig(), norm_default="none"):
    """Architecture flags; exercise2 adds them twice, as --t_* (teacher) and --s_* (student)."""
    d = defaults
    a = partial_add(group, prefix)
    a("hidden_size", type=pos_int, default=d.hidden_size, help=f"{who}FlexibleMLP: width of every hidden layer (default: {d.hidden_size})")
    a("depth", type=pos_int, default=d.depth, help=f"{who}FlexibleMLP: number of hidden layers (default: {d.depth})")
    a("hidden_sizes", type=pos_int, nargs="+", default=None,
      help=f"{who}FlexibleMLP: explicit hidden widths, e.g. 1200 1200 (overrides --{prefix}depth and "
        f"--{prefix}hidden_size; default: unset)")
    a("skips", type=skip_pair, nargs="+", default=None,
      help=f"{who}FlexibleMLP: extra skips TARGET:SOURCE (0 = input), e.g. 1:0 2:0 (default: none)")
    a("activation", choices=sorted(ACTIVATIONS), default=d.activation, help=f"{who}FlexibleMLP activation (default: {d.activation})")
    a("dropout", type=unit, default=d.dropout, help=f"{who}FlexibleMLP dropout probability (default: {d.dropout})")
    a("layers", type=pos_int, nargs="+", default=list(d.layers),
      help=f"{who}FlexibleCNN: blocks per stage, any number of stages, e.g. 3 4 6 3 or 3 3 3 "
        f"(default: {' '.join(map(str, d.layers))})")
    a("block", choices=sorted(BLOCKS), default=d.block, help=f"{who}FlexibleCNN block type (default: {d.block})")
    a("width", type=pos_int, default=d.width, help=f"{who}FlexibleCNN: channels of the first stage, doubled per stage (default: {d.width})")
    a("residual", action="store_true", help=f"{who}FlexibleMLP/FlexibleCNN: identity skips around every block (default: off)")
    a("norm", nargs="?", const="batch", default=None, choices=NORMS,
      help=f"{who}normalisation; bare --{prefix}norm = batch (default: {norm_default}; presets always use batch)")


def partial_add(group, prefix):
    def add(name, **kw):
        group.add_argument(f"--{prefix}{name}", dest=f"{prefix}{name}", **kw)
    return add


def model_config(args, name, prefix="", flexible_norm="none"):
    """flexible_norm: the norm of FlexibleMLP/FlexibleCNN when --norm is not given (presets always use batch)."""
    g = lambda k: getattr(args, f"{prefix}{k}")  # noqa: E731
    norm = g("norm") or ("batch" if name not in ("FlexibleMLP", "FlexibleCNN") else flexible_norm)
    if is_cnn(name) and norm == "layer":
        raise UsageError(f"--{prefix}norm layer is for FlexibleMLP; CNNs take none or batch")
    return ModelConfig(name=name, hidden_size=g("hidden_size"), depth=g("depth"),
                       hidden_sizes=tuple(g("hidden_sizes") or ()), skips=tuple(g("skips") or ()),
                       activation=g("activation"), dropout=g("dropout"), layers=tuple(g("layers")),
                       block=g("block"), width=g("width"), residual=g("residual"), norm=norm)


def add_data_args(parser, default_dataset_help="mnist for FlexibleMLP, cifar10 for CNNs"):
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset", choices=DATASETS, default=None, help=f"data set (default: {default_dataset_help}); "
                   "'folder' = an ImageFolder tree DATA_ROOT/{train,test[,val]}/<class>/*")
    g.add_argument("--data_root", default="./data", help="where the data set lives or is downloaded to (default: ./data)")
    g.add_argument("--val_split", type=fraction, default=0.1,
                   help="stratified validation fraction of the training set; 0 = none (default: 0.1)")
    g.add_argument("--subset", type=nonneg_int, default=0, help="use only N training examples, stratified (0 = all)")
    aug = g.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="augment training batches (crop+flip for colour, small affine for grey images); "
                          "default: on for colour data, off for grey")
    aug.add_argument("--no_augment", dest="augment", action="store_false", help="no augmentation")
    g.add_argument("--batch_size", type=pos_int, default=128, help="training batch size (default: 128)")
    g.add_argument("--loader", choices=("tensor", "standard"), default="tensor",
                   help="tensor: data resident on the device, batched augmentation (fast); standard: "
                        "torch DataLoader + torchvision transforms (default: tensor)")
    g.add_argument("--num_workers", type=nonneg_int, default=2, help="DataLoader workers for --loader standard")


def data_config(args, dataset, in_channels_hint=None):
    augment = args.augment if args.augment is not None else dataset in ("cifar10", "cifar100", "folder")
    return DataConfig(dataset=dataset, data_root=args.data_root, val_split=args.val_split, subset=args.subset,
                      augment=augment, batch_size=args.batch_size, loader=args.loader, num_workers=args.num_workers)


def add_optim_args(parser, epochs=10, lr=1e-3):
    g = parser.add_argument_group("Optimisation")
    g.add_argument("--epochs", type=pos_int, default=epochs, help=f"training epochs (default: {epochs})")
    g.add_argument("--lr", type=pos_float, default=lr, help=f"peak learning rate (default: {lr})")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam",
                   help="adam, adamw, or sgd with momentum 0.9 and Nesterov (default: adam)")
    g.add_argument("--momentum", type=unit, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight_decay", type=nonneg_float, default=0.0, help="weight decay (default: 0)")
    g.add_argument("--scheduler", nargs="?", const="cosine", default="none",
                   choices=("none", "cosine", "step", "onecycle"),
                   help="learning-rate schedule, stepped every batch; bare --scheduler = cosine; step = x0.1 at "
                        "50%% and 75%% of training (default: none)")
    g.add_argument("--warmup_epochs", type=nonneg_float, default=0.0, help="linear warm-up epochs (default: 0)")
    g.add_argument("--label_smoothing", type=fraction, default=0.0, help="label smoothing (default: 0)")
    g.add_argument("--early_stopping", type=nonneg_int, default=0, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation accuracy and restore the best "
                        "weights (default: 0 = off)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="random seed: weights, split, batches (default: 0)")
    g.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto",
                   help="auto = cuda, then mps, then cpu (default: auto)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision: autocast in bf16, or fp16 with a GradScaler; auto = bf16 (fp16 where "
                        "bf16 is unsupported) on CUDA, off elsewhere. On a CPU bf16 can be much slower: it made a "
                        "ResNet-20 training step about 10x slower on this project's machine (default: auto)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    return g


def resolve_device(request):
    if request == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if request == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    if request == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no MPS device is available here")
    return request


def resolve_amp(request, device, flag="--amp"):
    if not device.startswith("cuda"):
        if request == "fp16":
            raise UsageError(f"{flag} fp16 needs a CUDA device; use bf16 or off here")
        return "off" if request == "auto" else request
    if request == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return request


def train_config(args, early_stopping=None):
    device = resolve_device(args.device)
    return TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                       weight_decay=args.weight_decay, scheduler=args.scheduler, warmup_epochs=args.warmup_epochs,
                       label_smoothing=args.label_smoothing,
                       early_stopping=args.early_stopping if early_stopping is None else early_stopping,
                       device=device, amp=resolve_amp(args.amp, device), compile=args.compile, seed=args.seed)


def add_output_args(parser, project_help, resume_help="continue an interrupted run from its last.pt (settings come "
                    "from the checkpoint; only --epochs may be raised beside it)"):
    g = parser.add_argument_group("Output")
    g.add_argument("--save_dir", default="runs", help="parent folder of run folders (default: runs)")
    g.add_argument("--run_name", default=None, help="run folder name (default: key flags + time stamp)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    g.add_argument("--resume", default=None, metavar="PATH", help=resume_help)
    g.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="auto",
                   help="W&B logging; auto = online with credentials, else offline (default: auto)")
    g.add_argument("--wandb_project", default=None, help=f"W&B project (default: {project_help})")


def explicit_dests(parser, argv):
    """The dests the user actually typed (not defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kw = {"nargs": action.nargs} if action.nargs is not None else {}
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                probe.add_argument(*action.option_strings, dest=action.dest, action="store_const", const=True,
                                   default=argparse.SUPPRESS)
            else:
                probe.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS, **kw)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def from_dict(cls, d):
    """Rebuild a frozen config dataclass from its JSON form (lists back to tuples)."""
    names = {f.name for f in fields(cls)}
    tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v  # noqa: E731
    return cls(**{k: tup(v) for k, v in d.items() if k in names})


def config_dict(**parts):
    return {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in parts.items()}


def timestamp():
    return time.strftime("%Y%m%d-%H%M%S")


def run_main(main, argv=None):
    """Run main(argv); user errors become one line and exit 2, divergence exit 3, interruption exit 130."""
    try:
        code = main(argv)
    except (UsageError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Diverged as e:
        print(f"error: diverged: {e}", file=sys.stderr)
        code = 3
    except Interrupted as e:
        print(f"{e}; {e.hint or f'resume with: python {sys.argv[0]} --resume {e.resume_arg}'}", file=sys.stderr)
        code = 130
    sys.exit(code or 0)
