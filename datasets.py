"""Data sets as they lie on disk, read into uint8 tensors: MNIST and Fashion-MNIST IDX files, CIFAR python pickles
(through an unpickler that admits plain data only), and ImageFolder trees (imagefolder.py: decoded once, then cached).

    ds = load_dataset("mnist", "./data")            # DataSet of uint8 (N, C, H, W) tensors

Missing MNIST / CIFAR files are fetched by torchvision into data_root. Every file is checked as it is read
(labels in range, counts that match, images that decode, no decompression bombs); a damaged one is a DataError.
"""

import contextlib
import gzip
import math
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from errors import DataError
from imagefolder import load_folder

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "folder")


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


def _folder(root):
    classes, arrays = load_folder(root)
    return DataSet(classes=classes, **arrays)


def load_dataset(name, root):
    """Read a data set into uint8 tensors; raises DataError with a one-line message."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    load = {"mnist": _load_mnist, "fashion-mnist": _load_mnist, "cifar10": _load_cifar, "cifar100": _load_cifar}
    ds = load[name](name, root) if name in load else _folder(root)
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
