"""Max-norm weight constraint (Srivastava et al. 2014, "Dropout", Sec. 5.1 and Appendix B.1).

Call `max_norm_(model, c)` after every optimizer step: each unit's incoming weight vector (a row of a Linear
weight, an output filter weight[o] of a Conv1d/2d/3d) is projected back onto the ball of radius c, which bounds
weights however large the learning rate and lets dropout nets train with big steps and momentum.
Covered: every Linear and Conv, the classifier head too (one uniform rule, in the paper's spirit; pass
exclude=("head",) for Sec. 5.1's "each hidden unit"), and FlexibleMLP's skip projections `proj.*`, each on its own
(learned maps into hidden units, whose norm would otherwise grow unchecked). Not biases, not norm layers (per-unit
gains), not transposed convs (weight[o] is not a unit's incoming vector there).
"""

import torch
from torch import nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def max_norm_(model, c, exclude=()):
    """In place: rescale every row/filter with L2 norm > c to norm c, keeping its direction (norms within float
    rounding of c may move by an ulp). `exclude`: module-name prefixes, as named in the model inside any DDP
    (.module) or torch.compile (._orig_mod) wrapper."""
    if not c > 0:
        raise ValueError(f"max-norm c must be > 0, got {c}")
    while isinstance(inner := getattr(model, "module", getattr(model, "_orig_mod", None)), nn.Module):
        model = inner
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    ws = [
        m.weight
        for name, m in model.named_modules()
        if isinstance(m, _LAYERS) and not any(name == p or name.startswith(p + ".") for p in exclude)
    ]
    if ws:  # foreach: a few kernel launches for all layers (on a GPU, launches are most of the cost)
        scale = [torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True) for w in ws]
        torch._foreach_reciprocal_(scale)
        torch._foreach_mul_(scale, c)
        torch._foreach_clamp_max_(scale, 1.0)  # c / norm, but exactly 1.0 within c; c / 0 = inf -> 1
        torch._foreach_mul_(ws, scale)
