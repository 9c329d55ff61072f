"""Data sets as uint8 tensors on the training device, sliced, augmented and normalised a batch at a time.

    ds = load_dataset("mnist", "./data")            # DataSet of uint8 (N, C, H, W) tensors
    sizes = check_sizes(ds, DataConfig(), seed=0)    # {"train": n, "val": n, "test": n}, or a DataError
    loaders = make_loaders(ds, DataConfig(), seed=0, device="cpu")
    for batch in loaders.train: ...                  # Batch(x float (B, C, H, W), y (B,), idx (B,))

mnist, fashion-mnist (IDX .gz files) and cifar10, cifar100 (python pickles) are fetched by torchvision into
data_root when missing; `folder` is an ImageFolder tree ROOT/{train,test[,val]}/<class>/*, decoded once and
cached as one tensor file. The test set is only ever read by the final evaluation.
"""

import contextlib
import gzip
import hashlib
import math
import os
import pickle
import stat
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import tmp_name
from cli import flag, fraction, nonneg_int, pos_int, processes

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """Missing, corrupt or unusable data; the message is one line meant for the user (newlines are folded)."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = flag(
        "mnist", "data set; 'folder' = an ImageFolder tree DATA_ROOT/{train,test[,val]}/<class>/*", choices=DATASETS
    )
    data_root: str = flag("./data", "where the data set lives or is downloaded to")
    val_split: float = flag(0.1, "stratified validation fraction of the training set; 0 = none", type=fraction)
    subset: int = flag(0, "use only N training examples, stratified; 0 = all", type=nonneg_int)
    augment: bool = flag(
        False, "augment training batches (crop+flip for colour, small affine for grey images)", action="store_true"
    )
    batch_size: int = flag(128, "training batch size", type=pos_int)
    loader: str = flag(
        "tensor",
        "tensor: data resident on the device, batched augmentation (fast); standard: "
        "torch DataLoader + torchvision transforms",
        choices=("tensor", "standard"),
    )
    num_workers: int = flag(2, "DataLoader workers for --loader standard", type=processes)
    k_folds: int = flag(
        0,
        "stratified K-fold cross-validation on the training set instead of one split (K >= 2); 0 = off",
        type=nonneg_int,
        metavar="K",
    )
    fold: int = 0  # which fold (1..k_folds) a k-fold child trains on
    norm: tuple = ()  # (mean, std) per channel, in [0, 1] units; () = from the training split

    def check_restored(self):
        """Read back from a run folder: the fields no flag sets must fit the others."""
        if self.k_folds == 1 or not 0 <= self.fold <= self.k_folds:
            raise ValueError(f"fold {self.fold} of k_folds {self.k_folds}")
        if self.norm:
            check_norm(self.norm)


def check_norm(norm):
    """(mean, std): two equally long tuples of finite numbers, the stds positive; else ValueError."""
    ok = isinstance(norm, (tuple, list)) and len(norm) == 2 and all(isinstance(v, (tuple, list)) for v in norm)
    if not (
        ok
        and 1 <= len(norm[0]) == len(norm[1]) <= 4
        and all(type(x) in (int, float) and math.isfinite(x) for v in norm for x in v)
        and min(norm[1]) > 0
    ):
        raise ValueError(f"input normalisation {str(norm)[:60]} is not (mean, std) per channel with std > 0")


@dataclass
class DataSet:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    val_x: Optional[torch.Tensor] = None  # a folder data set's own val/ split, if it has one
    val_y: Optional[torch.Tensor] = None

    @property
    def in_shape(self):
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)


class Batch(NamedTuple):
    x: torch.Tensor  # float (B, C, H, W), normalised
    y: torch.Tensor  # int64 (B,)
    idx: torch.Tensor  # int64 (B,): positions in the loader's arrays (for cached teacher logits)


# ---------------------------------------------------------------- reading the on-disk formats


def _download(tv_name, root, name, expected, how):
    """Let torchvision fetch a data set into root; any failure is one DataError line, no traceback."""
    import torchvision

    made = [p for p in (Path(root), Path(root) / tv_name, Path(root) / tv_name / "raw") if not p.exists()]
    try:
        for train in (True, False):
            getattr(torchvision.datasets, tv_name)(root, train=train, download=True)
    except Exception:  # URLError, RuntimeError("...corrupted"), PermissionError: all mean the same to the user
        for p in reversed(made):  # the folders the failed download made, if it left them empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise DataError(
            f"{name} not found: expected {expected} under {root} and the download failed (offline?); {how}"
        ) from None


def _read_idx(path):
    """An IDX file (optionally .gz) -> uint8 tensor of its shape."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            (magic,) = struct.unpack(">I", f.read(4))
            ndim = magic & 0xFF
            if magic >> 8 != 0x08 or not 1 <= ndim <= 3:
                raise ValueError("bad magic number")
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            n = torch.Size(shape).numel()
            if n == 0:
                raise ValueError(f"header shape {shape} holds no data")
            if n > 2**34:
                raise ValueError(f"header shape {shape} is implausibly large")
            data = f.read(n + 1)  # never more than the header promises: a gzip bomb is not inflated
        if len(data) != n:
            raise ValueError(f"{len(data) if len(data) <= n else 'more'} bytes of data for shape {shape}")
    except (OSError, EOFError, ValueError, struct.error, zlib.error, MemoryError) as e:  # BadGzipFile: an OSError
        raise DataError(f"corrupt data file {path}: {e or type(e).__name__}") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(shape)


def _load_mnist(name, root):
    tv_name = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]  # also the folder name under root
    raw = Path(root) / tv_name / "raw"
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

    def find(stem):
        return next((p for p in (raw / f"{stem}.gz", raw / stem) if p.exists()), None)

    if any(find(s) is None for s in stems):
        _download(
            tv_name,
            root,
            name,
            f"{tv_name}/raw/{{{','.join(s + '.gz' for s in stems)}}}",
            "pass --data_root to a folder holding the original archives",
        )
    xtr, ytr, xte, yte = (_read_idx(find(s)) for s in stems)
    if (xtr.ndim, ytr.ndim, xte.ndim, yte.ndim) != (3, 1, 3, 1):
        raise DataError(f"{name}: the files in {raw} are not (N, H, W) images and (N,) labels")
    import torchvision

    classes = getattr(torchvision.datasets, tv_name).classes
    return DataSet(xtr.unsqueeze(1), ytr.long(), xte.unsqueeze(1), yte.long(), list(classes))


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what the CIFAR python archives hold: numpy arrays and plain data. Any other global a pickle
    names would be called while loading, i.e. it would run code (os.system, exec...)."""

    SAFE = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes under protocol 2
    SAFE |= {
        (f"numpy.{core}.{mod}", fn)
        for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
    }  # _frombuffer: protocol 5
    SAFE |= {(b, t) for b in ("builtins", "__builtin__") for t in ("bytes", "bytearray", "set", "frozenset", "complex")}

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise DataError(f"lab1 refuses to load {self.path} (it would run code: {module}.{name})")


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            u = _CifarUnpickler(f, encoding="bytes")
            u.path = path
            return u.load()
    except DataError:
        raise
    except Exception as e:  # a garbled pickle fails in many ways: UnpicklingError, EOFError, KeyError, MemoryError...
        raise DataError(f"corrupt data file {path}: {type(e).__name__}: {e}") from None


def _load_cifar(name, root):
    folder, train_files, test_files, meta_file, label_key, names_key, tv_name = {
        "cifar10": (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "batches.meta",
            b"labels",
            b"label_names",
            "CIFAR10",
        ),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", "CIFAR100"),
    }[name]
    base = Path(root) / folder
    if not all((base / f).exists() for f in train_files + test_files + [meta_file]):
        _download(
            tv_name,
            root,
            name,
            f"{folder}/ (the extracted python-version archive)",
            "pass --data_root to a folder holding it, or use --dataset folder for an ImageFolder copy",
        )

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f)
            x, y = (d.get(b"data"), d.get(label_key)) if isinstance(d, dict) else (None, None)
            y = np.asarray(
                y if isinstance(y, np.ndarray) or isinstance(y, list) and all(type(v) is int for v in y) else []
            )  # (N,) integers, else rejected below (a huge int gives dtype object)
            if not (
                isinstance(x, np.ndarray)
                and x.dtype == np.uint8
                and x.shape == (len(y), 3072)
                and len(y)
                and y.ndim == 1
                and y.dtype.kind in "iu"
            ):
                raise DataError(
                    f"corrupt data file {base / f}: expected a dict of {b'data'!r}: uint8 (N, 3072) "
                    f"and {label_key!r}: a list of N integer labels"
                )
            xs.append(torch.as_tensor(x).reshape(-1, 3, 32, 32))
            ys.append(torch.as_tensor(y, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    meta = _unpickle(base / meta_file)
    names = meta.get(names_key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(c, (bytes, str)) for c in names):
        raise DataError(
            f"corrupt meta file {base / meta_file}: expected a dict whose {names_key!r} lists the class names"
        )
    classes = [c.decode(errors="replace") if isinstance(c, bytes) else c for c in names]
    return DataSet(*read(train_files), *read(test_files), classes)


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


def _load_folder(root):
    root = Path(root)
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
    cache = _cache_path(root, [f for _, files in splits.values() for f in files])
    if cache.exists():
        try:
            cached = DataSet(**torch.load(cache, weights_only=True))
            labels_ok = cached.classes == classes and all(  # the labels the listing gives, in its order
                torch.equal(getattr(cached, f"{s}_y"), torch.tensor([i for _, i in files], dtype=torch.long))
                for s, (_, files) in splits.items()
            )
            if labels_ok and all(
                isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(splits[s][1])
                for s, x in (("train", cached.train_x), ("test", cached.test_x), ("val", cached.val_x))
                if s in splits
            ):
                return cached
            raise ValueError("not the listing's images and labels")
        except Exception:
            cache.unlink(missing_ok=True)  # a stale or broken cache is rebuilt, never trusted
    from PIL import Image

    arrays = {}
    # A decompression bomb is refused; PIL only warns below twice its pixel limit (the filter is process-wide).
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for s, (_, files) in splits.items():
            images = list(
                tqdm(
                    pool.map(_decode, (p for p, _ in files)),
                    total=len(files),
                    leave=False,
                    desc=f"decoding {root / s} (once; cached)",
                    mininterval=1,
                    dynamic_ncols=True,
                )
            )
            if len(shapes := {tuple(im.shape) for im in images}) > 1:
                raise DataError(
                    f"folder data set: mixed image sizes under {root}/{s}: {sorted(shapes)[:3]}; "
                    "resize them to one size first"
                )
            arrays[f"{s}_x"] = torch.stack(images)
            arrays[f"{s}_y"] = torch.tensor([label for _, label in files], dtype=torch.long)
    if len({tuple(arrays[f"{s}_x"].shape[1:]) for s in splits}) > 1:
        raise DataError(f"folder data set: image sizes differ between splits under {root}")
    ds = DataSet(classes=classes, **arrays)
    tmp = tmp_name(cache)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in vars(ds).items() if v is not None}, tmp)
        os.replace(tmp, cache)
        for old in cache.parent.glob(cache.name.split(".lab1_cache_")[0] + ".lab1_cache_*.pt"):
            if old != cache:  # the same folder's cache of an earlier listing: stale for good
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError):  # torch.save reports a full disk as a RuntimeError
        pass  # caching is an optimisation: an unwritable cache only costs the next load its time
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return ds


def load_dataset(name, root):
    """Read a data set into uint8 tensors; raises DataError with a one-line message."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    load = {"mnist": _load_mnist, "fashion-mnist": _load_mnist, "cifar10": _load_cifar, "cifar100": _load_cifar}
    ds = load[name](name, root) if name in load else _load_folder(root)
    # Every format: as many labels as images, each in 0..k-1 (else training fails part-way).
    where, k = f"{name} data in {root}", ds.num_classes
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y), ("val", ds.val_x, ds.val_y)):
        if x is None:
            continue
        if len(x) != len(y) or len(y) == 0:
            raise DataError(f"{where}: the {split} split has {len(x)} images and {len(y)} labels")
        if (bad := (y < 0) | (y >= k)).any():
            raise DataError(f"{where}: {split} label {y[bad][0].item()} is outside 0..{k - 1} (the {k} classes)")
        if x.ndim != 4 or x.shape[1:] != ds.train_x.shape[1:] or x.dtype != torch.uint8:
            raise DataError(
                f"{where}: {split} images are {tuple(x.shape[1:])} {x.dtype}, the training images "
                f"{tuple(ds.train_x.shape[1:])} {ds.train_x.dtype}; every split needs one image size"
            )
    # A channel of one value everywhere would be normalised by a std of 0 (infinities, then NaN losses).
    if (ds.train_x.amax(dim=(0, 2, 3)) == ds.train_x.amin(dim=(0, 2, 3))).any():
        raise DataError(
            f"{where}: every training image has one and the same value in a whole channel; there is "
            "nothing to learn from (constant images)"
        )
    return ds


# ---------------------------------------------------------------- splits


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


def check_sizes(ds, cfg: DataConfig, seed, k_folds=0):
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
    return {"train": train, "val": val, "test": len(ds.test_y)}


# ---------------------------------------------------------------- batched augmentation


def random_crop_flip(x, g, pad=4):
    """x (B, C, H, W) float -> same shape: random crop of the zero-padded image, then a random h-flip.
    g is a generator on x's device, so no random numbers cross from the host inside the step."""
    (B, C, H, W), dev = x.shape, x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B, 1), generator=g, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (B, 1), generator=g, device=dev)
    flip = torch.rand(B, 1, generator=g, device=dev) < 0.5
    rows = dy + torch.arange(H, device=dev)  # (B, H)
    cols = dx + torch.arange(W, device=dev)  # (B, W)
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_affine(x, g, degrees=10.0, shift=2.0):
    """x (B, C, H, W) float -> same shape: rotation within +-degrees, shift within +-shift pixels."""
    (B, _, H, W), dev = x.shape, x.device
    angle = (torch.rand(B, generator=g, device=dev) * 2 - 1) * degrees * torch.pi / 180
    t = (torch.rand(B, 2, generator=g, device=dev) * 2 - 1) * shift * 2 / torch.tensor([W, H], device=dev)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def augmentation_for(in_shape):
    """CIFAR-like (colour) data get crop + flip, MNIST-like (grey) data a small affine."""
    return random_crop_flip if in_shape[0] == 3 else random_affine


def channel_stats(x):
    """uint8 (N, C, H, W) -> per-channel mean and std in [0, 1] units, each (C,)."""
    xf = x.transpose(0, 1).reshape(x.shape[1], -1).float() / 255
    return xf.mean(1), xf.std(1)


# ---------------------------------------------------------------- loaders


class _Loader:
    """What both loaders share. The order of epoch e depends only on (seed, e), so a resumed run sees the same
    batches as an uninterrupted one. Batch k is order[k * batch_size:(k + 1) * batch_size], except that a last
    batch too small to give each of W ranks 2 examples (W = 1: a batch of one) joins the previous batch: batch
    norm cannot train on one example per channel, and no example is dropped."""

    def __init__(self, n, batch_size, shuffle, seed, channels_last, world=1):
        self.n, self.shuffle, self.seed, self.epoch, self._next_step, self._seek = n, shuffle, seed, 0, 0, None
        full, rest = divmod(n, batch_size)
        k = full + (rest >= 2 * world or full == 0 and rest > 0)
        self.slices = [slice(i * batch_size, (i + 1) * batch_size if i + 1 < k else n) for i in range(k)]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch):
        self.epoch = epoch

    def position(self):
        """Where this epoch's iteration stands, {"epoch", "step"}: enough to restart it at its next step."""
        return {"epoch": self.epoch, "step": self._next_step}

    def seek(self, position):
        """Make the next iteration (only) start where `position` (from position()) left off."""
        self.epoch, self._seek = position["epoch"], position

    def __len__(self):
        return len(self.slices)

    def _begin(self, device):
        """-> this epoch's generator, its example order (the same on every rank, for both loaders) and the
        position seek() gave, or None."""
        g = torch.Generator(device=device).manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g, device=device) if self.shuffle else torch.arange(self.n)
        seek, self._seek = self._seek, None
        return g, order.to(device), seek


class TensorLoader(_Loader):
    """Batches from uint8 tensors held on `device`: slice, augment and normalise in one go per batch. The
    augmentation of epoch e also depends only on (seed, e). Under DDP (shard = (rank, W)) each rank takes its
    tensor_split share of every global batch."""

    def __init__(
        self,
        x,
        y,
        batch_size,
        mean,
        std,
        device,
        augment=None,
        shuffle=False,
        seed=0,
        channels_last=False,
        shard=(0, 1),
    ):
        self.rank, self.world = shard  # (rank, world size): this process's slice of every global batch
        super().__init__(len(y), batch_size, shuffle, seed, channels_last, self.world)
        self.x, self.y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        self.batch_size, self.augment, self._g = batch_size, augment, None
        self.scale = (1 / (255 * std)).to(device).view(1, -1, 1, 1)
        self.shift = (-mean / std).to(device).view(1, -1, 1, 1)

    def position(self):
        """The base position and the state of the generator the augmentation draws from."""
        return {**super().position(), "generator": self._g.get_state()}

    def __iter__(self):
        g, order, seek = self._begin(self.x.device)
        if self.rank:  # the augmentation stream differs per rank
            g.manual_seed(self.seed * 100_003 + self.epoch + 7_919 * self.rank)
        if seek:
            g.set_state(seek["generator"])
        self._g = g
        for step in range(seek["step"] if seek else 0, len(self)):
            self._next_step = step + 1
            idx = order[self.slices[step]]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            x = self.x[idx].float()  # (B, C, H, W) in 0..255
            if self.augment is not None:
                x = self.augment(x, g)
            x = (x * self.scale + self.shift).contiguous(memory_format=self.memory_format)
            yield Batch(x, self.y[idx], idx)


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, x, y, transform, seed):
        self.x, self.y, self.transform, self.seed = x, y, transform, seed

    def __getitem__(self, key):
        from PIL import Image

        epoch, i = key
        img = self.x[i].permute(1, 2, 0).squeeze(-1).numpy()
        # torchvision draws from torch's global RNG: seeded per sample (MT uses the low 32 bits), the augmentation
        # depends only on (seed, epoch, i), whichever worker runs it and whenever it was started.
        with torch.random.fork_rng(devices=[]):  # (torch.manual_seed would cost 0.2 ms: it visits every device)
            torch.default_generator.manual_seed(((self.seed * 100_003 + epoch) * 1_000_003 + i) % 2**32)
            return self.transform(Image.fromarray(img)), self.y[i], i


class StandardLoader(_Loader):
    """The textbook pipeline (per-sample PIL + torchvision transforms in DataLoader workers), for comparison
    and for data that do not fit in memory. Same interface and batches as TensorLoader (_Loader); exact on
    resume whatever num_workers, as each sample's augmentation depends only on (seed, epoch, index)."""

    def __init__(
        self,
        x,
        y,
        batch_size,
        mean,
        std,
        device,
        augment=None,
        shuffle=False,
        seed=0,
        num_workers=2,
        channels_last=False,
    ):
        from torchvision import transforms as T

        size = x.shape[-1]
        aug = {
            random_crop_flip: [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()],
            random_affine: [T.RandomAffine(10, translate=(2 / size, 2 / size))],
        }.get(augment, [])
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize(mean.tolist(), std.tolist())])
        super().__init__(len(y), batch_size, shuffle, seed, channels_last)
        self.device = device
        # The batch sampler is a list refilled by every __iter__ with (epoch, index) batches: the epoch reaches
        # the persistent workers with each index. Its own generator: its unused base seed leaves torch's RNG alone.
        self._batches = []
        self.loader = torch.utils.data.DataLoader(
            _PILDataset(x, y, tf, seed),
            batch_sampler=self._batches,
            num_workers=num_workers,
            generator=torch.Generator(),
            pin_memory=str(device).startswith("cuda"),
            persistent_workers=num_workers > 0,
        )

    def __iter__(self):
        _, order, seek = self._begin("cpu")
        self._next_step = seek["step"] if seek else 0
        self._batches[:] = [[(self.epoch, i) for i in order[s].tolist()] for s in self.slices[self._next_step :]]
        for x, y, idx in self.loader:
            self._next_step += 1
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield Batch(x, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True))


@dataclass
class Loaders:
    train: object
    val: Optional[object]
    test: object
    train_y: torch.Tensor  # labels of the training arrays, in loader index order (for teacher caches)
    norm: tuple  # ((mean per channel), (std per channel)) that every loader normalises with


def make_loaders(ds, cfg: DataConfig, seed, device, fold=None, channels_last=False, shard=(0, 1)):
    """Training / validation / test loaders. Validation: `fold` = (train_idx, val_idx) if given, else the data set's
    own val/ split, else a stratified seeded `val_split`. Normalised with cfg.norm, else the training split's stats.
    Sizes that would leave a split empty raise DataError (check_sizes; callers check folds before)."""
    if fold is None:
        check_sizes(ds, cfg, seed)
    x, y = ds.train_x, ds.train_y
    if cfg.subset:
        keep = stratified_subset(y, cfg.subset, seed)
        x, y = x[keep], y[keep]
    xv = yv = None
    if ds.val_x is not None and fold is None:
        xv, yv = ds.val_x, ds.val_y
    elif fold is not None or cfg.val_split > 0:
        tr, va = fold if fold is not None else stratified_split(y, cfg.val_split, seed)
        (xv, yv), (x, y) = (x[va], y[va]), (x[tr], y[tr])
    mean, std = (torch.tensor(v) for v in cfg.norm) if cfg.norm else channel_stats(x)
    if shard[1] > 1 and cfg.loader != "tensor":
        raise DataError("under torchrun only --loader tensor shards the data")
    Loader = TensorLoader if cfg.loader == "tensor" else StandardLoader
    extra = {"num_workers": cfg.num_workers} if cfg.loader == "standard" else {}

    def make(xs, ys, train):
        augment = augmentation_for(ds.in_shape) if train and cfg.augment else None
        kw = {**extra, "shard": shard} if train and shard[1] > 1 else extra
        return Loader(
            xs,
            ys,
            cfg.batch_size if train else max(cfg.batch_size, 1024),
            mean,
            std,
            device,
            augment=augment,
            shuffle=train,
            seed=seed,
            channels_last=channels_last,
            **kw,
        )

    return Loaders(
        make(x, y, True),
        make(xv, yv, False) if xv is not None else None,
        make(ds.test_x, ds.test_y, False),
        y,
        (tuple(mean.tolist()), tuple(std.tolist())),
    )
