"""Linear probes on a frozen network: its penultimate features of every split (extracted once, cached in the run
folder), and logistic regression or a linear SVM on them (scikit-learn, standardised features) with the inverse
regularisation C chosen on the validation split."""

import hashlib
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import load_file, save_checkpoint
from dataloader import make_loaders
from device import make_autocast
from errors import UsageError

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # C of both probes: the one with the best validation accuracy is kept


@torch.no_grad()
def extract_features(model, loader, device, autocast, desc="data"):
    """Penultimate features of every example in `loader`, in index order: (N, D) float32, and labels (N,)."""
    model.eval().to(device)
    feats, labels = None, None
    for batch in tqdm(loader, desc=f"features of {desc}", leave=False, mininterval=1, dynamic_ncols=True):
        with autocast():
            f = model.features(batch.x).float()
        if feats is None:
            n = len(loader.y) if hasattr(loader, "y") else len(loader.loader.dataset)
            feats = torch.empty(n, f.shape[1], device=device)
            labels = torch.empty(n, dtype=torch.long, device=device)
        feats[batch.idx] = f
        labels[batch.idx] = batch.y
    return feats.cpu(), labels.cpu()


def cached_features(model, ds, data_cfg, train_cfg, run_dir, pretrained_path, digest=""):
    """Features of the train / val / test splits, extracted once and kept in run_dir/features.pt. digest: the
    pretrained file's sha256 (else its path and time stamp say which network the features are of)."""
    path = Path(run_dir) / "features.pt"
    network = digest or f"{Path(pretrained_path).resolve()}|{Path(pretrained_path).stat().st_mtime_ns}"
    key = hashlib.sha256(f"{network}|{data_cfg}".encode()).hexdigest()[:16]
    if path.exists():
        cache = load_file(path, "feature cache")
        if isinstance(cache, dict) and cache.get("key") == key:
            print(f"features: reusing {path}")
            return cache["splits"]
    loaders = make_loaders(ds, replace(data_cfg, augment=False), train_cfg.seed, train_cfg.device)
    autocast = make_autocast(train_cfg)
    splits = {
        name: extract_features(model, loader, train_cfg.device, autocast, name)
        for name, loader in (("train", loaders.train), ("val", loaders.val), ("test", loaders.test))
        if loader is not None
    }
    save_checkpoint(path, {"key": key, "splits": splits})
    print(f"features: extracted {tuple(splits['train'][0].shape)} training features once, cached in {path}")
    return splits


def classical(mode, splits, seed, grid=C_GRID):
    """Logistic regression (linear) or a linear SVM (svm) on standardised features. C is the one of `grid` with the
    best validation accuracy (the smaller on a tie: more regularised); without a validation split, C = 1. Returns
    {"test_acc", "val_acc", "C", "val_acc_by_C", "test_examples", "train_time_s"} (the time of all the fits)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    (xtr, ytr), (xte, yte) = ((x.numpy(), y.numpy()) for x, y in (splits["train"], splits["test"]))
    if len(set(ytr.tolist())) < 2:
        raise UsageError(f"{mode}: the training features hold fewer than 2 classes; use more examples (--subset)")

    def fit(c):
        clf = LogisticRegression(C=c, max_iter=1000) if mode == "linear" else LinearSVC(C=c, random_state=seed)
        return make_pipeline(StandardScaler(), clf).fit(xtr, ytr)

    accuracy = lambda pipe, x, y: float((pipe.predict(x) == y).mean())  # noqa: E731
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # a large C may stop at max_iter: still a fit, judged on validation like the rest
        warnings.simplefilter("ignore", ConvergenceWarning)
        if splits.get("val") is None:
            by_c, best, pipe = {}, 1.0, fit(1.0)
        else:
            xv, yv = splits["val"][0].numpy(), splits["val"][1].numpy()
            fits = {c: fit(c) for c in grid}
            by_c = {c: accuracy(p, xv, yv) for c, p in fits.items()}
            best = max(grid, key=lambda c: (by_c[c], -c))
            pipe = fits[best]
    seconds, test = time.perf_counter() - t0, accuracy(pipe, xte, yte)
    val = by_c.get(best)
    print(
        f"{mode}: C {best:g} "
        + (f"chosen on validation (val acc {val:.4f}); " if by_c else "(no validation split to choose it on); ")
        + f"test acc {test:.4f} ({seconds:.1f}s)"
    )
    return {
        "test_acc": test,
        "val_acc": val,
        "C": best,
        "val_acc_by_C": {f"{c:g}": a for c, a in by_c.items()},
        "test_examples": len(yte),
        "train_time_s": seconds,
    }
