"""Stratified, seeded splits of a training set (validation, K folds, subsets), and the sizes a configuration leaves
for each split, checked before anything is trained. (lab1's own: the same seed gives the same examples as before, and
scikit-learn's splitters refuse small validation sets that these allow.)"""

import torch

from errors import DataError


def _by_class(y, seed):
    """Per class, its indices in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    return [
        idx[torch.randperm(len(idx), generator=g)] for idx in (torch.nonzero(y == c).flatten() for c in torch.unique(y))
    ]


def _quotas(counts, fraction):
    """Class sizes n_c -> how many of each a stratified `fraction` takes, round(fraction * N) in all: floor(fraction
    * n_c) each, and the examples left over go to the classes with the largest remainders."""
    exact = [fraction * n for n in counts]
    quota = [int(e) for e in exact]
    leftover = int(round(fraction * sum(counts))) - sum(quota)
    for i in sorted(range(len(counts)), key=lambda i: quota[i] - exact[i])[: max(0, leftover)]:
        quota[i] += 1
    return quota


def stratified_split(y, fraction, seed):
    """-> (train_idx, val_idx): round(fraction * N) validation examples, each class in proportion (_quotas); seeded.
    Not sklearn's StratifiedShuffleSplit: it refuses fewer validation examples than classes, and would move every
    published split."""
    groups = _by_class(y, seed)
    quota = _quotas([len(idx) for idx in groups], fraction)
    val = torch.cat([idx[:q] for idx, q in zip(groups, quota)])
    train = torch.cat([idx[q:] for idx, q in zip(groups, quota)])
    return train.sort().values, val.sort().values


def stratified_kfold(y, k, seed):
    """-> K (train_idx, val_idx) pairs; every example is in exactly one validation fold. Not sklearn's
    StratifiedKFold (ours give each class's extras to the first folds), as another would move every published fold."""
    chunks = [idx.tensor_split(k) for idx in _by_class(y, seed)]
    return [
        (
            torch.cat([c[j] for c in chunks for j in range(k) if j != i]).sort().values,
            torch.cat([c[i] for c in chunks]).sort().values,
        )
        for i in range(k)
    ]


def stratified_subset(y, n, seed):
    """-> n indices with the class proportions of y (stratified_split's quotas, hence not sklearn's either)."""
    return torch.arange(len(y)) if n >= len(y) else stratified_split(y, n / len(y), seed)[1]


def training_positions(ds, cfg, seed, fold=None):
    """-> (train, val): the positions in the data set's whole training set of the examples make_loaders trains and
    validates on, in its order; val is None when validation is the data set's own val/ split or there is none. One
    rule for the loaders and for whatever is indexed by the whole training set (teacher_logits.pt)."""
    pos = torch.arange(len(ds.train_y))
    if cfg.subset:
        pos = pos[stratified_subset(ds.train_y, cfg.subset, seed)]
    if fold is None and (ds.val_x is not None or not cfg.val_split > 0):
        return pos, None
    tr, va = fold if fold is not None else stratified_split(ds.train_y[pos], cfg.val_split, seed)
    return pos[tr], pos[va]


def check_sizes(ds, cfg, seed, k_folds=0):
    """-> the examples make_loaders will use, {"train": n, "val": n or 0, "test": n}, from the class counts alone
    (so `seed` changes nothing); with k_folds, "train" and "val" are lists of the K folds' sizes. Raises DataError
    (one line, saying what to change) where a split would be empty or have fewer training examples than classes."""
    k, n = ds.num_classes, len(ds.train_y)
    counts = torch.unique(ds.train_y, return_counts=True)[1].tolist()  # per class present, as _by_class orders them
    if cfg.subset and not k <= cfg.subset <= n:
        why = f"smaller than the number of classes ({k})" if cfg.subset < k else f"larger than the training set ({n})"
        raise DataError(f"--subset {cfg.subset} is {why}: use {k}..{n}, or 0 for all")
    if 0 < cfg.subset < n:  # a class the subset leaves out is absent, as from torch.unique of the subset
        counts = [c for c in _quotas(counts, cfg.subset / n) if c]
    n, more = sum(counts), " or a larger --subset" if cfg.subset else ""
    if k_folds and k_folds > min(counts):
        raise DataError(
            f"--k_folds {k_folds} is more than the {min(counts)} examples of the smallest class "
            f"({n} training examples in all): use fewer folds{more}"
        )
    if k_folds:
        val = [sum(c // k_folds + (i < c % k_folds) for c in counts) for i in range(k_folds)]  # tensor_split sizes
        train = [n - v for v in val]
    elif ds.val_y is not None:
        train, val = n, len(ds.val_y)
    else:
        val = sum(_quotas(counts, cfg.val_split)) if cfg.val_split > 0 else 0
        train = n - val
        if cfg.val_split > 0 and val == 0:
            raise DataError(
                f"--val_split {cfg.val_split} of {n} training examples is 0 examples: raise --val_split"
                f"{more}, or pass --val_split 0"
            )
        if val and train < k:
            raise DataError(
                f"--val_split {cfg.val_split} leaves {train} of the {n} training examples, fewer than the "
                f"{k} classes: lower --val_split{more}"
            )
    if (fewest := min(train) if k_folds else train) < k:
        raise DataError(f"only {fewest} training examples for {k} classes: use more data")
    if cfg.test_subset and not k <= cfg.test_subset <= len(ds.test_y):
        why = "smaller than the number of classes" if cfg.test_subset < k else "larger than the test set"
        raise DataError(f"--test_subset {cfg.test_subset} is {why}: use {k}..{len(ds.test_y)}, or 0 for all")
    return {"train": train, "val": val, "test": len(examples_tested(ds, cfg)[1])}


def examples_tested(ds, cfg):
    """(x, y) of the test examples evaluated: all, or --test_subset's stratified N, drawn with one fixed seed so that
    every run and seed is tested on the same examples and their results compare."""
    if not cfg.test_subset:
        return ds.test_x, ds.test_y
    keep = tested_indices(ds, cfg)
    return ds.test_x[keep], ds.test_y[keep]


def tested_indices(ds, cfg):
    """The positions in the test set of the examples evaluated, in the order they are evaluated."""
    return stratified_subset(ds.test_y, cfg.test_subset, seed=0) if cfg.test_subset else torch.arange(len(ds.test_y))
