"""ImageFolder trees ROOT/{train,test[,val]}/<class>/*: their listing, the threaded decode (which a stop ends
cleanly), and the one tensor file they are cached in after the first decode.

    classes, arrays = load_folder(root)    # arrays: {"train_x": uint8 (N, 3, H, W), "train_y": int64 (N,), ...}
"""

import contextlib
import hashlib
import os
import signal
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from errors import DataError, DiskFull, Stopped
from files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test", "val")


def _decode(path):
    """An image file -> uint8 (3, H, W)."""
    from PIL import Image

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


@contextlib.contextmanager
def stops_recorded():
    """Ctrl-C and SIGTERM are recorded in the yielded list instead of raised, until the block ends.

    Raised from the handler, a stop lands at any bytecode of the main thread, also inside threading's and the
    pool's own code between acquiring a lock and the `with` that would release it; the lock then stays held, the
    decode threads wait on it, and the pool's shutdown waits on them: a stop that hung for good (seen with SIGTERM
    during a first decode). Only the main thread runs handlers; elsewhere nothing is changed."""
    asked = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    before = {s: signal.signal(s, lambda signum, frame: asked.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def decode_all(paths, desc):
    """Every image of `paths`, decoded on a thread pool, in order. A stop meanwhile cancels the decodes not begun,
    lets the running ones (one image each) end, and is then raised as Stopped: it never waits on a held lock."""
    with stops_recorded() as asked:
        pool = ThreadPoolExecutor(max_workers=os.cpu_count())
        try:
            futures = [pool.submit(_decode, p) for p in paths]
            images = []
            with tqdm(total=len(paths), leave=False, desc=desc, mininterval=1, dynamic_ncols=True) as bar:
                for f in futures:
                    while not asked:
                        try:
                            images.append(f.result(timeout=0.1))  # a tenth of a second at most between looks
                            break
                        except Pending:
                            pass
                    if asked:
                        break
                    bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if asked:
        raise Stopped(asked[0])
    return images


def _cached(cache, classes, splits):
    """The arrays of a cache file that holds exactly this listing's images and labels, else None (and it is gone)."""
    try:
        cached = torch.load(cache, weights_only=True)
        labels_ok = cached["classes"] == classes and all(  # the labels the listing gives, in its order
            torch.equal(cached[f"{s}_y"], torch.tensor([i for _, i in files], dtype=torch.long))
            for s, (_, files) in splits.items()
        )
        if labels_ok and all(
            isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(splits[s][1])
            for s, x in ((s, cached.get(f"{s}_x")) for s in SPLITS)
            if s in splits
        ):
            return {f"{s}_{k}": cached[f"{s}_{k}"] for s in splits for k in "xy"}
        raise ValueError("not the listing's images and labels")
    except Exception:
        cache.unlink(missing_ok=True)  # a stale or broken cache is rebuilt, never trusted
        return None


def _listing(root):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(
            f"folder data set: expected {root}/train/<class>/* and {root}/test/<class>/* (ImageFolder layout)"
        )
    splits = {s: _scan_split(root / s) for s in SPLITS if (root / s).is_dir()}
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
    return classes, splits


def load_folder(root):
    """(classes, {"train_x", "train_y", "test_x", "test_y"[, "val_x", "val_y"]}) of an ImageFolder tree."""
    root = Path(root)
    classes, splits = _listing(root)
    cache = _cache_path(root, [f for _, files in splits.values() for f in files])
    if cache.exists() and (arrays := _cached(cache, classes, splits)) is not None:
        return classes, arrays
    from PIL import Image

    arrays = {}
    # A decompression bomb is refused; PIL only warns below twice its pixel limit (the filter is process-wide).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for s, (_, files) in splits.items():
            images = decode_all([p for p, _ in files], f"decoding {root / s} (once; cached)")
            if len(shapes := {tuple(im.shape) for im in images}) > 1:
                raise DataError(
                    f"folder data set: mixed image sizes under {root}/{s}: {sorted(shapes)[:3]}; "
                    "resize them to one size first"
                )
            arrays[f"{s}_x"] = torch.stack(images)
            arrays[f"{s}_y"] = torch.tensor([label for _, label in files], dtype=torch.long)
    if len({tuple(arrays[f"{s}_x"].shape[1:]) for s in splits}) > 1:
        raise DataError(f"folder data set: image sizes differ between splits under {root}")
    _write_cache(cache, {**arrays, "classes": classes})
    return classes, arrays


def _write_cache(cache, content):
    """Write the cache and drop this folder's caches of earlier listings; caching is an optimisation, so a cache
    that cannot be written only costs the next load its time."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save(content, tmp))
        for old in cache.parent.glob(cache.name.split(".lab1_cache_")[0] + ".lab1_cache_*.pt"):
            if old != cache:  # the same folder's cache of an earlier listing: stale for good
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError, DiskFull):
        pass
