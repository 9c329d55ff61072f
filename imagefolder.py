"""ImageFolder trees ROOT/{train,test[,val]}/<class>/*: scanned and checked, decoded once by a thread pool, and cached
as one tensor file beside the data (or in ~/.cache/lab1 when that folder is read-only)."""

import hashlib
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from errors import DataError, DiskFull
from files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _decode(path):
    """An image file -> uint8 (3, H, W)."""
    try:
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"corrupt image {path}: {e}") from None  # UnidentifiedImageError is an OSError
    return arr.permute(2, 0, 1)


def _scan_split(split_dir):
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files = [
        (p, i)
        for i, c in enumerate(classes)
        for p in sorted((split_dir / c).iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]  # a FIFO or device would block the read
    return classes, files


def _cache_path(root, listing):
    h = hashlib.sha256()
    for p, label in listing:
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    name = f".lab1_cache_{h.hexdigest()[:16]}.pt"
    # The mode bits are checked too: root passes os.access on a read-only (r-x) folder.
    if os.access(root, os.W_OK) and root.stat().st_mode & stat.S_IWUSR:
        return root / name
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lab1"
    return cache / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}{name}"


def _scan(root):
    """{split: (classes, [(path, label)])} of a folder data set, checked before anything is decoded."""
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(
            f"folder data set: expected {root}/train/<class>/* and {root}/test/<class>/* (ImageFolder layout)"
        )
    splits = {s: _scan_split(root / s) for s in ("train", "test", "val") if (root / s).is_dir()}
    classes = splits["train"][0]
    if len(classes) < 2:
        raise DataError(f"folder data set: {root}/train has {len(classes)} class folder(s); at least 2 are needed")
    for s, (c, files) in splits.items():
        if c != classes:
            raise DataError(f"folder data set: {root}/{s} has classes {c}, train has {classes}")
        if not files:
            raise DataError(f"folder data set: no images under {root}/{s}")
    empty = sorted(set(classes) - {classes[i] for _, i in splits["train"][1]})
    if empty:
        raise DataError(f"folder data set: no training images in {root}/train/{empty[0]}; every class needs some")
    return splits


def _cached(cache, splits):
    """The cache's tensors if they are the listing's images and labels; a stale or broken cache is removed."""
    classes = splits["train"][0]
    try:
        cached = torch.load(cache, weights_only=True)
        labels_ok = cached["classes"] == classes and all(  # the labels the listing gives, in its order
            torch.equal(cached[f"{s}_y"], torch.tensor([i for _, i in files], dtype=torch.long))
            for s, (_, files) in splits.items()
        )
        images_ok = all(
            isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(splits[s][1])
            for s, x in ((s, cached[f"{s}_x"]) for s in splits)
        )
        if labels_ok and images_ok and set(cached) == {"classes", *(f"{s}_{k}" for s in splits for k in "xy")}:
            return cached
    except Exception:
        pass
    cache.unlink(missing_ok=True)  # rebuilt, never trusted
    return None


def _decode_all(root, splits):
    """{split_x: uint8 (N, 3, H, W), split_y: int64 (N,)} decoded by a thread pool, one image size per data set."""
    arrays = {}
    # A decompression bomb is refused; PIL only warns below twice its pixel limit (the filter is process-wide).
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for s, (_, files) in splits.items():
            desc = f"decoding {root / s} (once; cached)"
            decoded = pool.map(_decode, (p for p, _ in files))
            images = list(tqdm(decoded, total=len(files), leave=False, desc=desc, mininterval=1, dynamic_ncols=True))
            if len(shapes := {tuple(im.shape) for im in images}) > 1:
                raise DataError(
                    f"folder data set: mixed image sizes under {root}/{s}: {sorted(shapes)[:3]}; "
                    "resize them to one size first"
                )
            arrays[f"{s}_x"] = torch.stack(images)
            arrays[f"{s}_y"] = torch.tensor([label for _, label in files], dtype=torch.long)
    if len({tuple(arrays[f"{s}_x"].shape[1:]) for s in splits}) > 1:
        raise DataError(f"folder data set: image sizes differ between splits under {root}")
    return arrays


def _keep(cache, arrays):
    """Write the cache and drop this folder's caches of earlier listings; caching is an optimisation, so a cache
    that cannot be written only costs the next load its time."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save(arrays, tmp))
        for old in cache.parent.glob(cache.name.split(".lab1_cache_")[0] + ".lab1_cache_*.pt"):
            if old != cache:
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError, DiskFull):
        pass


def load_folder(root):
    """A folder data set as {classes, train_x, train_y, test_x, test_y[, val_x, val_y]}: the cache if it holds this
    listing, else decoded and cached."""
    root = Path(root)
    splits = _scan(root)
    cache = _cache_path(root, [f for _, files in splits.values() for f in files])
    if cache.exists() and (arrays := _cached(cache, splits)) is not None:
        return arrays
    arrays = {"classes": splits["train"][0], **_decode_all(root, splits)}
    _keep(cache, arrays)
    return arrays
