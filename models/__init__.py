"""Model registry: `build_model(ModelConfig, in_shape, num_classes)` is what the scripts call.

Presets are one-liners over FlexibleCNN: the He et al. 2016 CIFAR family (3 stages of n blocks, widths
16/32/64, parameter-free shortcut A; depth = 6n + 2: 8, 14 for quick studies, then 20/32/44/56/110) and
ResNet-18/34/50 in their CIFAR form (3x3 stem).
"""

from dataclasses import asdict, dataclass
from functools import partial

from flags import Distinct, count, flag, fraction, nonneg_float, pos_int, skip_pair

from .cnn import BLOCKS, BasicBlock, Bottleneck, FlexibleCNN
from .constraints import max_norm_
from .init import INITS, init_weights
from .mlp import ACTIVATIONS, NORMS, FlexibleMLP


@dataclass(frozen=True)
class ModelConfig:
    """Architecture flags; exercise2 gives them twice, as --t_* (teacher) and --s_* (student)."""

    name: str = "FlexibleMLP"
    hidden_size: int = flag(128, "FlexibleMLP: width of every hidden layer", type=pos_int)
    depth: int = flag(4, "FlexibleMLP: number of hidden layers", type=count)
    hidden_sizes: tuple = flag(
        (),
        "FlexibleMLP: explicit hidden widths, e.g. 1200 1200 (overrides depth and hidden_size)",
        type=pos_int,
        nargs="+",
    )
    skips: tuple = flag(
        (),
        "FlexibleMLP: extra skips TARGET:SOURCE (0 = input), e.g. 1:0 2:0",
        type=skip_pair,
        nargs="+",
        action=Distinct,
    )
    activation: str = flag("relu", "FlexibleMLP activation", choices=sorted(ACTIVATIONS))
    dropout: float = flag(0.0, "FlexibleMLP dropout probability on hidden units", type=fraction)
    input_dropout: float = flag(
        0.0, "FlexibleMLP dropout probability on the flattened input (Hinton et al.'s teacher: 0.2)", type=fraction
    )
    max_norm: float = flag(
        0.0,
        "after each optimizer step rescale every unit's incoming weights (Linear rows, conv "
        "filters, the head included) to L2 norm <= C (Srivastava et al. 2014); 0 = off",
        type=nonneg_float,
        metavar="C",
    )
    init: str = flag(
        "default",
        "weight initialisation: default = each model's own (PyTorch's kaiming_uniform with a=sqrt(5) for "
        "Linear/Conv; FlexibleCNN and presets: Kaiming normal fan_out for convs), he = Kaiming normal (fan_in, ReLU "
        "gain), xavier = Glorot uniform; biases zero for he/xavier, norm layers untouched",
        choices=INITS,
    )
    layers: tuple = flag(
        (2, 2, 2, 2),
        "FlexibleCNN: blocks per stage, any number of stages, e.g. 3 4 6 3 or 3 3 3",
        type=count,
        nargs="+",
    )
    block: str = flag("basic", "FlexibleCNN block type", choices=sorted(BLOCKS))
    width: int = flag(64, "FlexibleCNN: channels of the first stage, doubled per stage", type=pos_int)
    residual: bool = flag(False, "FlexibleMLP/FlexibleCNN: identity skips around every block")
    norm: str = flag(
        "none", "normalisation; a bare flag = batch (presets always use batch)", nargs="?", const="batch", choices=NORMS
    )

    def mlp_hidden_sizes(self):
        return tuple(self.hidden_sizes) or (self.hidden_size,) * self.depth


def _he_cifar(n, residual):
    return partial(FlexibleCNN, layers=(n, n, n), width=16, residual=residual, norm=True, shortcut="A")


def _resnet(layers, block):
    return partial(FlexibleCNN, layers=layers, block=block, width=64, residual=True, norm=True)


PRESETS = {
    **{f"resnet{6 * n + 2}": _he_cifar(n, True) for n in (1, 2, 3, 5, 7, 9, 18)},
    **{f"plain{6 * n + 2}": _he_cifar(n, False) for n in (1, 2, 3, 5, 7, 9, 18)},
    "resnet18": _resnet((2, 2, 2, 2), "basic"),
    "resnet34": _resnet((3, 4, 6, 3), "basic"),
    "resnet50": _resnet((3, 4, 6, 3), "bottleneck"),
}
MODEL_NAMES = ("FlexibleMLP", "FlexibleCNN", *PRESETS)


def is_cnn(name):
    return name != "FlexibleMLP"


MLP_ONLY = {"hidden_size", "depth", "hidden_sizes", "skips", "activation", "dropout", "input_dropout"}
CNN_ONLY = {"layers", "block", "width"}


def _unread(name):
    """The ModelConfig fields model `name` never reads (a preset fixes all but max_norm, init, norm)."""
    if name in ("FlexibleMLP", "FlexibleCNN"):
        return CNN_ONLY if name == "FlexibleMLP" else MLP_ONLY
    return MLP_ONLY | CNN_ONLY | {"residual"}


def unread_flags(name, given):
    """The ModelConfig fields among `given` that model `name` never reads."""
    return sorted(_unread(name) & set(given))


def model_dict(cfg: ModelConfig):
    """cfg as a run's config.json (and W&B's config) holds it: only the fields its model reads. Read back with
    flags.from_dict, the others take their defaults (as do those of config files written before)."""
    return {k: v for k, v in asdict(cfg).items() if k not in _unread(cfg.name)}


def build_model(cfg: ModelConfig, in_shape, num_classes):
    """in_shape = (C, H, W) of one example; the weights as --init asks (init="default": as constructed)."""
    return init_weights(_construct(cfg, in_shape, num_classes), cfg.init)


def _construct(cfg: ModelConfig, in_shape, num_classes):
    if cfg.name == "FlexibleMLP":
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        return FlexibleMLP(
            n_in,
            num_classes,
            cfg.mlp_hidden_sizes(),
            cfg.skips,
            cfg.residual,
            cfg.norm,
            cfg.activation,
            cfg.dropout,
            cfg.input_dropout,
        )
    if cfg.name == "FlexibleCNN":
        return FlexibleCNN(in_shape[0], num_classes, cfg.layers, cfg.block, cfg.width, cfg.residual, cfg.norm != "none")
    if cfg.name in PRESETS:
        return PRESETS[cfg.name](in_shape[0], num_classes)
    raise ValueError(f"unknown model {cfg.name!r}; choose from {', '.join(MODEL_NAMES)}")


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(name, model):
    """One line: name and parameter count."""
    n = count_params(model)
    return f"{name}: {n:,} parameters ({n / 1e6:.2f}M)"


__all__ = [
    "ModelConfig",
    "build_model",
    "summary",
    "count_params",
    "is_cnn",
    "unread_flags",
    "model_dict",
    "PRESETS",
    "MODEL_NAMES",
    "max_norm_",
    "init_weights",
    "INITS",
    "FlexibleMLP",
    "FlexibleCNN",
    "BasicBlock",
    "Bottleneck",
    "BLOCKS",
    "ACTIVATIONS",
    "NORMS",
]
