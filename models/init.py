"""Weight initialisation chosen by --init, applied once to a freshly built model.

"default" leaves every model as its constructor made it (PyTorch's kaiming_uniform with a=sqrt(5) for Linear and
Conv layers; FlexibleCNN and the presets re-draw their convs Kaiming normal, fan_out), drawing nothing more, so
runs made before the flag existed reproduce bit for bit. "he" (He et al. 2015: Kaiming normal, fan_in, ReLU gain
sqrt(2)) and "xavier" (Glorot & Bengio 2010: uniform, gain 1) re-draw the weight of every Linear and Conv2d, the
head and FlexibleMLP's skip projections included, and zero their biases; norm layers keep their ones and zeros.
"""

import torch
from torch import nn

INITS = ("default", "he", "xavier")
_LAYERS = (nn.Linear, nn.Conv2d)


@torch.no_grad()
def init_weights(model, kind):
    """In place, in module order (so a seed gives the same weights every time); returns the model."""
    if kind not in INITS:
        raise ValueError(f"unknown init {kind!r}; choose from {', '.join(INITS)}")
    if kind == "default":
        return model
    for m in model.modules():
        if isinstance(m, _LAYERS):
            if kind == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
