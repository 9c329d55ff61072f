"""Max-norm weight constraint (Srivastava et al. 2014, "Dropout", Sec. 5.1 and Appendix B.1).

Call `max_norm_(model, c)` after every optimizer step. Each unit's incoming weight vector is projected
back onto the ball of radius c: rows of nn.Linear weights (out x in), output filters of Conv1d/2d/3d
(weight[o] flattened). It bounds weights however large the learning rate, which is what lets dropout
nets train with big steps and momentum. What counts as a unit's incoming weights here:
- every Linear and Conv: the classifier head too (bounding the logits' scale is in the same spirit, and
  one uniform rule needs no name-based cases; Sec. 5.1's wording is "each hidden unit", so pass
  exclude=("head",) for that narrower reading), and FlexibleMLP's bias-free skip projections `proj.*`
  (each is a learned linear map into hidden units whose norm would otherwise grow unchecked; each is
  bounded on its own, not jointly with the block's fc). `exclude` takes module-name prefixes as named
  in the unwrapped model.
- not biases, not norm layers (their scales are per-unit gains, not incoming vectors), not transposed
  convs (their weight is (in, out, ...), so weight[o] is not a unit's incoming vector).
"""
import torch
from torch import nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def max_norm_(model, c, exclude=()):
    """In place: rescale every row/filter with L2 norm > c to norm c, keeping its direction; rows below c
    keep their values (scale clamped to 1.0; only norms within float rounding of c may move by an ulp).
    DDP (.module) and torch.compile (._orig_mod) wrappers are unwrapped so `exclude` names match the
    bare model's. One norm per layer, then foreach ops over all layers: cheap enough for every step."""
    if not c > 0:
        raise ValueError(f"max-norm c must be > 0, got {c}")
    while isinstance(inner := getattr(model, "module", getattr(model, "_orig_mod", None)), nn.Module):
        model = inner
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    ws = [m.weight for name, m in model.named_modules()
          if isinstance(m, _LAYERS) and not any(name == p or name.startswith(p + ".") for p in exclude)]
    if ws:  # foreach: a few kernel launches for all layers (on a GPU, launches are most of the cost)
        scale = [torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True) for w in ws]
        torch._foreach_reciprocal_(scale)
        torch._foreach_mul_(scale, c)
        torch._foreach_clamp_max_(scale, 1.0)  # c / norm, but exactly 1.0 within c; c / 0 = inf -> 1
        torch._foreach_mul_(ws, scale)
