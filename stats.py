"""Statistics for multi-seed results: one run per seed is noisy, so tables report mean ± sample std and,
for "A beats B" claims, the paired per-seed difference with a Student-t 95% interval (pairing by seed
removes the seed-to-seed variance that A and B share). No project imports; scipy is imported lazily."""

import math
import statistics


def number(v):
    """A finite int or float (not a bool, a string, NaN or infinity): what a results file may hold as a figure."""
    return type(v) in (int, float) and math.isfinite(v)


def mean_std(values):
    """(mean, sample std with n-1). One value has std 0.0 rather than NaN, so single-seed tables print."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paired(a, b):
    """Per-seed differences a_i - b_i (same seeds, same order): mean, sample std, n and the 95% CI
    mean ± t_{0.975, n-1} std / sqrt(n). With n = 1 there is no spread to estimate: std is 0.0 and the
    interval is [None, None] (undefined), not a zero-width interval that would look certain."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired needs one value per seed on both sides, got {len(a)} and {len(b)}")
    m, s = mean_std(x - y for x, y in zip(a, b))
    n = len(a)
    ci = [None, None]
    if n > 1:
        from scipy.stats import t

        h = float(t.ppf(0.975, n - 1)) * s / math.sqrt(n)
        ci = [m - h, m + h]
    return {"mean": m, "std": s, "seeds": n, "ci95": ci}


def gap_closed(student, alone, teacher):
    """Fraction of the teacher's lead over the student trained alone that distillation recovers, on test
    accuracy: 1 = matches the teacher, 0 = no gain, < 0 = worse than alone. None when the teacher is no better
    than the student alone: there is no gap to close, and the ratio would be a meaningless -400%."""
    return None if teacher <= alone else (student - alone) / (teacher - alone)


def format_paired(p, scale=1.0, digits=4):
    """paired()'s dict as one table cell, e.g. "+0.0123 ± 0.0040 (95% CI +0.0023 .. +0.0223, n=3)";
    scale=100 turns accuracy fractions into percentage points. n = 1 prints "(n=1, no CI)"."""
    f = lambda x: f"{x * scale:+.{digits}f}"  # noqa: E731
    lo, hi = p["ci95"]
    if lo is None:
        return f"{f(p['mean'])} (n={p['seeds']}, no CI)"
    return f"{f(p['mean'])} ± {p['std'] * scale:.{digits}f} (95% CI {f(lo)} .. {f(hi)}, n={p['seeds']})"
