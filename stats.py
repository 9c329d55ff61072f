"""Statistics for "A beats B" claims. Across seeds: one run per seed is noisy, so tables report mean ± sample std
and the paired per-seed difference with a Student-t 95% interval (pairing by seed removes the seed-to-seed variance
that A and B share). Within one run: two models scored on the same test examples are compared per example (McNemar's
exact test, paired bootstrap intervals), since the examples both get right or both get wrong say nothing about which
is better. No project imports; scipy is imported lazily."""

import math
import statistics

import numpy as np


def number(v):
    """A finite int or float (not a bool, a string, NaN or infinity): what a results file may hold as a figure."""
    return type(v) in (int, float) and math.isfinite(v)


def mean_std(values):
    """(mean, sample std with n-1). One value has std 0.0 rather than NaN, so single-seed tables print."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def format_mean_std(mean, std, n, digits=4):
    """A mean over n seeds as one table cell: "0.9123 ± 0.0012" for several, the value alone for one (a std of 0
    would claim a certainty that one seed cannot give)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def mean_ci(values):
    """Mean, sample std, n and the 95% CI mean ± t_{0.975, n-1} std / sqrt(n) of independent values. With n = 1
    there is no spread to estimate: std is 0.0 and the interval is [None, None] (undefined), not a zero-width
    interval that would look certain."""
    xs = [float(v) for v in values]
    m, s = mean_std(xs)
    n = len(xs)
    ci = [None, None]
    if n > 1:
        from scipy.stats import t

        h = float(t.ppf(0.975, n - 1)) * s / math.sqrt(n)
        ci = [m - h, m + h]
    return {"mean": m, "std": s, "seeds": n, "ci95": ci}


def paired(a, b):
    """mean_ci() of the per-seed differences a_i - b_i (same seeds, same order)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired needs one value per seed on both sides, got {len(a)} and {len(b)}")
    return mean_ci(x - y for x, y in zip(a, b))


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


def _per_example(*sides):
    """Per-example correctness (same test examples, same order) as one (m, n) bool array per side: a side is one
    model's 1-D vector or an (m, n) array of m models. Anything but 0/1 values is refused: predicted labels passed
    by mistake would otherwise read as "correct"."""
    arrays = [np.asarray(c) for c in sides]
    if any(c.ndim not in (1, 2) or not c.size for c in arrays) or len({c.shape[-1] for c in arrays}) != 1:
        raise ValueError(
            f"need one non-empty correctness vector (or an array of them) per side, over the same examples, got "
            f"shapes {[c.shape for c in arrays]}"
        )
    if not all(c.dtype == bool or np.isin(c, (0, 1)).all() for c in arrays):
        raise ValueError("correctness vectors hold booleans (or 0/1), one per test example")
    return [np.atleast_2d(c).astype(bool) for c in arrays]


def mcnemar(a_correct, b_correct):
    """McNemar's exact test for two classifiers scored on the same examples: only the discordant examples (one
    right, the other wrong) carry evidence, and under "equally good" each is A's with probability 1/2. Returns
    {"n", "a_only", "b_only", "p_value"}: the two-sided binomial p-value of a_only out of a_only + b_only, 1.0
    when there are no discordant examples. Given (m, n) arrays, row i of A is paired with row i of B (e.g. the
    distilled and the alone student of one seed) and the test pools the m pairs' discordant examples."""
    a, b = _per_example(a_correct, b_correct)
    if a.shape != b.shape:
        raise ValueError(f"McNemar pairs model i of A with model i of B: got {len(a)} and {len(b)} models")
    a, b = a.ravel(), b.ravel()
    a_only, b_only = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))
    p = 1.0
    if a_only + b_only:
        from scipy.stats import binomtest

        p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": p}


def _bootstrap_counts(sides, n_boot, seed):
    """(n_boot, len(sides)) float: per resample of the n examples (drawn with replacement, the same indices for
    every model), how many each side got right, averaged over the side's models. Drawn in chunks of at most ~4M
    indices (60k examples x 10k resamples at once would be 2.4 GB); the chunk size depends only on n, so a seed
    gives the same numbers every time."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    cols = np.concatenate(sides)
    n = cols.shape[1]
    rows = max(1, 2**22 // n)
    counts = np.empty((n_boot, len(cols)), dtype=np.int64)
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n), dtype=np.int64 if n > 2**31 else np.int32)
        for j, col in enumerate(cols):
            counts[start : start + len(idx), j] = np.count_nonzero(col[idx], axis=1)
    ends = np.cumsum([len(side) for side in sides])
    return np.stack([c.mean(axis=1) for c in np.split(counts, ends[:-1], axis=1)], axis=1)


def _ci95(values):
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _accuracy(side):
    return int(np.count_nonzero(side)) / side.size  # from counts: no rounding twice


def bootstrap_diff(a_correct, b_correct, n_boot=10000, seed=0):
    """Paired bootstrap of accuracy(A) - accuracy(B) on one test set: {"mean": the observed difference, "ci95":
    [lo, hi] (2.5th and 97.5th percentiles over n_boot resamples of the examples), "n_boot"}. Resampling both
    models' results with the same indices keeps their pairing, so the examples both get right add no noise. A side
    given as an (m, n) array is m models (e.g. students of several seeds) and its accuracy is their mean."""
    sides = _per_example(a_correct, b_correct)
    counts = _bootstrap_counts(sides, n_boot, seed)
    n = sides[0].shape[1]
    mean = _accuracy(sides[0]) - _accuracy(sides[1])
    return {"mean": mean, "ci95": _ci95((counts[:, 0] - counts[:, 1]) / n), "n_boot": n_boot}


def bootstrap_gap_closed(student_correct, alone_correct, teacher_correct, n_boot=10000, seed=0):
    """Paired bootstrap of gap_closed() over the test examples: {"value": the observed gap closed (None when the
    teacher is no better than the student alone), "ci95": [lo, hi] over the resamples where it is defined ([None,
    None] if none is), "n_boot", "undefined": how many resamples had teacher <= alone and were left out}. Many
    undefined resamples mean the teacher's lead itself is not established, and the interval is optimistic. Each
    side may be an (m, n) array of several models, scored by their mean accuracy."""
    sides = _per_example(student_correct, alone_correct, teacher_correct)
    s, a, t = _bootstrap_counts(sides, n_boot, seed).T  # counts: the 1/n cancels in the ratio
    ok = t > a
    value = gap_closed(*(_accuracy(side) for side in sides))
    ci = _ci95((s[ok] - a[ok]) / (t[ok] - a[ok])) if ok.any() else [None, None]
    return {"value": value, "ci95": ci, "n_boot": n_boot, "undefined": int(n_boot - np.count_nonzero(ok))}


def format_mcnemar(m, a="A", b="B"):
    """mcnemar()'s dict as one table cell, e.g. "A only 12, B only 30, p = 0.0064 (McNemar exact, n=10000)";
    a and b name the models. p below 0.0001 prints in scientific notation rather than as a bare 0.0000, and one
    that underflowed to 0.0 as "< 1e-300"."""
    p = m["p_value"]
    shown = f"= {p:.4f}" if p >= 1e-4 else f"= {p:.1e}" if p > 0 else "< 1e-300"  # 0.0: below the float range
    return f"{a} only {m['a_only']}, {b} only {m['b_only']}, p {shown} (McNemar exact, n={m['n']})"
