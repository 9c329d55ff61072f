"""FlexibleMLP: depth, width, residual/arbitrary skips, normalisation, activation, dropout.

Hidden block t (t = 1..L) maps x_{t-1} -> x_t:
    x_t = dropout(act(norm(Linear(x_{t-1})))) + sum over skips (t, s) of P_ts(x_s)
where x_0 is the flattened input, after input dropout when set (Srivastava et al. 2014 drop 20% of MNIST
pixels; Hinton et al. 2015's teacher copies that), and P_ts is the identity when widths match, else a
learned bias-free Linear. `residual=True` is the every-block case skips = {t: t-1}.
"""

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
NORMS = ("none", "batch", "layer")
_NORM_LAYERS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}  # any other kind: no normalisation


class MLPBlock(nn.Module):
    """Linear -> norm -> activation -> dropout."""

    def __init__(self, d_in, d_out, norm, activation, dropout):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out, bias=norm == "none")
        self.norm = _NORM_LAYERS[norm](d_out) if norm in _NORM_LAYERS else nn.Identity()
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.act(self.norm(self.fc(x))))


class FlexibleMLP(nn.Module):
    def __init__(
        self,
        in_features,
        num_classes,
        hidden_sizes,
        skips=(),
        residual=False,
        norm="none",
        activation="relu",
        dropout=0.0,
        input_dropout=0.0,
    ):
        super().__init__()
        widths = [in_features, *hidden_sizes]  # widths[t] = width of x_t
        if (depth := len(widths) - 1) < 1:
            raise ValueError("FlexibleMLP needs at least one hidden layer")
        pairs = set(skips) | ({(t, t - 1) for t in range(1, depth + 1)} if residual else set())
        for target, source in pairs:
            if not (1 <= target <= depth and 0 <= source < target):
                raise ValueError(f"skip {target}:{source} needs 0 <= source < target <= depth ({depth})")
        self.skips = sorted(pairs)
        self.blocks = nn.ModuleList(MLPBlock(a, b, norm, activation, dropout) for a, b in zip(widths, widths[1:]))
        # Projections keyed "target_source"; identity skips need no module.
        self.proj = nn.ModuleDict(
            {f"{t}_{s}": nn.Linear(widths[s], widths[t], bias=False) for t, s in self.skips if widths[s] != widths[t]}
        )
        self.head = nn.Linear(widths[-1], num_classes)
        # Both choices are parameter-free: state_dict keys (and old checkpoints) are the same either way.
        self.in_drop = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()

    def features(self, x):
        """Penultimate activations: (B, *input) -> (B, widths[-1])."""
        xs = [self.in_drop(x.flatten(1))]  # xs[t]: (B, widths[t])
        for t, block in enumerate(self.blocks, start=1):
            out = block(xs[-1])
            for target, source in self.skips:
                if target == t:
                    key = f"{t}_{source}"
                    out = out + (self.proj[key](xs[source]) if key in self.proj else xs[source])
            xs.append(out)
        return xs[-1]

    def forward(self, x):
        return self.head(self.features(x))
