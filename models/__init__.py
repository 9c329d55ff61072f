"""Model registry: `build_model(ModelConfig, in_shape, num_classes)` is what the scripts call.

Presets are one-liners over FlexibleCNN: the He et al. 2016 CIFAR family (3 stages of n blocks, widths
16/32/64, parameter-free shortcut A; depth = 6n + 2: 8, 14 for quick studies, then 20/32/44/56/110) and ResNet-18/34/50 in their CIFAR form (3x3 stem).
"""
from dataclasses import dataclass
from functools import partial

from .cnn import BLOCKS, BasicBlock, Bottleneck, FlexibleCNN
from .constraints import max_norm_
from .mlp import ACTIVATIONS, NORMS, FlexibleMLP


@dataclass(frozen=True)
class ModelConfig:
    name: str = "FlexibleMLP"
    # FlexibleMLP
    hidden_size: int = 128
    depth: int = 4
    hidden_sizes: tuple = ()          # overrides depth x hidden_size when given
    skips: tuple = ()                 # ((target, source), ...), 0 = the input
    activation: str = "relu"
    dropout: float = 0.0
    input_dropout: float = 0.0        # on the flattened input; CNNs ignore it
    # FlexibleCNN
    layers: tuple = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    # both
    residual: bool = False
    norm: str = "none"                # MLP: none/batch/layer; CNN: none/batch

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


def build_model(cfg: ModelConfig, in_shape, num_classes):
    """in_shape = (C, H, W) of one example."""
    if cfg.name == "FlexibleMLP":
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        return FlexibleMLP(n_in, num_classes, cfg.mlp_hidden_sizes(), cfg.skips, cfg.residual,
                           cfg.norm, cfg.activation, cfg.dropout, cfg.input_dropout)
    if cfg.name == "FlexibleCNN":
        return FlexibleCNN(in_shape[0], num_classes, cfg.layers, cfg.block, cfg.width, cfg.residual,
                           cfg.norm != "none")
    if cfg.name in PRESETS:
        return PRESETS[cfg.name](in_shape[0], num_classes)
    raise ValueError(f"unknown model {cfg.name!r}; choose from {', '.join(MODEL_NAMES)}")


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(name, model):
    """One line: name and parameter count."""
    n = count_params(model)
    return f"{name}: {n:,} parameters ({n / 1e6:.2f}M)"


__all__ = ["ModelConfig", "build_model", "summary", "count_params", "is_cnn", "PRESETS", "MODEL_NAMES",
           "max_norm_", "FlexibleMLP", "FlexibleCNN", "BasicBlock", "Bottleneck", "BLOCKS", "ACTIVATIONS", "NORMS"]
