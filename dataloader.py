"""Data sets as uint8 tensors on the training device, sliced, augmented and normalised a batch at a time.

    ds = load_dataset("mnist", "./data")            # DataSet of uint8 (N, C, H, W) tensors
    loaders = make_loaders(ds, DataConfig(), seed=0, device="cpu")
    for batch in loaders.train: ...                  # Batch(x float (B, C, H, W), y (B,), idx (B,))

Data sets: mnist, fashion-mnist (IDX .gz files), cifar10, cifar100 (python pickles), all fetched by
torchvision with download=True into data_root when missing; `folder` is any ImageFolder tree
ROOT/{train,test[,val]}/<class>/*, decoded once and cached as one tensor file.
The test set is kept apart: it is only ever read by the final evaluation.
"""
import gzip
import hashlib
import os
import pickle
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """Missing, corrupt or unusable data; the message is one line meant for the user."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    data_root: str = "./data"
    val_split: float = 0.1
    subset: int = 0               # 0 = the whole training set
    augment: bool = False
    batch_size: int = 128
    loader: str = "tensor"        # "tensor" (device-resident) or "standard" (DataLoader + transforms)
    num_workers: int = 2          # standard loader only
    norm: tuple = ()              # (mean, std) per channel, in [0, 1] units; () = from the training split


@dataclass
class DataSet:
    train_x: torch.Tensor         # uint8 (N, C, H, W)
    train_y: torch.Tensor         # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    val_x: Optional[torch.Tensor] = None   # a folder data set's own val/ split, if it has one
    val_y: Optional[torch.Tensor] = None

    @property
    def in_shape(self):
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)


class Batch(NamedTuple):
    x: torch.Tensor    # float (B, C, H, W), normalised
    y: torch.Tensor    # int64 (B,)
    idx: torch.Tensor  # int64 (B,): positions in the loader's arrays (for cached teacher logits)


# ---------------------------------------------------------------- reading the on-disk formats

def _missing(name, root, expected, how):
    return DataError(f"{name} not found: expected {expected} under {root} and the download failed (offline?); "
                     f"{how}")


def _read_idx(path):
    """An IDX file (optionally .gz) -> uint8 tensor of its shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        magic, = struct.unpack(">I", raw[:4])
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or not 1 <= ndim <= 3:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = raw[4 + 4 * ndim:]
        if len(data) != torch.Size(shape).numel():
            raise ValueError(f"{len(data)} bytes of data for shape {shape}")
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(f"corrupt data file {path}: {e}") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(shape)


def _load_mnist(name, root):
    folder, tv_name = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("FashionMNIST", "FashionMNIST")}[name]
    raw = Path(root) / folder / "raw"
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

    def find(stem):
        return next((p for p in (raw / f"{stem}.gz", raw / stem) if p.exists()), None)

    if any(find(s) is None for s in stems):
        _download(tv_name, root, _missing(name, root, f"{folder}/raw/{{{','.join(s + '.gz' for s in stems)}}}",
                                          "pass --data_root to a folder holding the original archives"))
    xtr, ytr, xte, yte = (_read_idx(find(s)) for s in stems)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{name}: image and label counts differ in {raw}")
    import torchvision
    classes = getattr(torchvision.datasets, tv_name).classes
    return DataSet(xtr.unsqueeze(1), ytr.long(), xte.unsqueeze(1), yte.long(), list(classes))


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"corrupt data file {path}: {e}") from None


def _load_cifar(name, root):
    if name == "cifar10":
        folder, train_files, test_files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_file, label_key, names_key, tv_name = "batches.meta", b"labels", b"label_names", "CIFAR10"
    else:
        folder, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        meta_file, label_key, names_key, tv_name = "meta", b"fine_labels", b"fine_label_names", "CIFAR100"
    base = Path(root) / folder
    if not all((base / f).exists() for f in train_files + test_files + [meta_file]):
        _download(tv_name, root, _missing(name, root, f"{folder}/ (the extracted python-version archive)",
                                          "pass --data_root to a folder holding it, or use --dataset folder "
                                          "for an ImageFolder copy"))

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f)
            try:
                xs.append(torch.as_tensor(d[b"data"]).reshape(-1, 3, 32, 32))
                ys.append(torch.as_tensor(d[label_key], dtype=torch.long))
            except (KeyError, RuntimeError, TypeError, ValueError) as e:
                raise DataError(f"corrupt data file {base / f}: {e}") from None
        return torch.cat(xs), torch.cat(ys)

    meta = _unpickle(base / meta_file)
    classes = [c.decode() for c in meta.get(names_key, [])]
    (xtr, ytr), (xte, yte) = read(train_files), read(test_files)
    return DataSet(xtr, ytr, xte, yte, classes)


def _download(tv_name, root, error):
    """Let torchvision fetch a data set into root; any failure becomes `error` (one line, no traceback)."""
    import torchvision
    try:
        getattr(torchvision.datasets, tv_name)(root, train=True, download=True)
        getattr(torchvision.datasets, tv_name)(root, train=False, download=True)
    except Exception:  # URLError, RuntimeError("...corrupted"), PermissionError: all mean the same to the user
        raise error from None


def _decode(path):
    """An image file -> uint8 (3, H, W)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"corrupt image {path}: {e}") from None
    return arr.permute(2, 0, 1)


def _scan_split(split_dir):
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files = [(p, i) for i, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())
             if p.suffix.lower() in IMAGE_EXTENSIONS]
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
        raise DataError(f"folder data set: expected {root}/train/<class>/* and {root}/test/<class>/* "
                        "(ImageFolder layout)")
    splits = {s: _scan_split(root / s) for s in ("train", "test", "val") if (root / s).is_dir()}
    classes = splits["train"][0]
    if len(classes) < 2:
        raise DataError(f"folder data set: {root}/train has {len(classes)} class folder(s); at least 2 are needed")
    for s, (c, files) in splits.items():
        if c != classes:
            raise DataError(f"folder data set: {root}/{s} has classes {c}, train has {classes}")
        if not files:
            raise DataError(f"folder data set: no images under {root}/{s}")
    listing = [f for _, files in splits.values() for f in files]
    cache = _cache_path(root, listing)
    if cache.exists():
        try:
            return DataSet(**torch.load(cache, weights_only=True))
        except Exception:
            cache.unlink(missing_ok=True)  # a stale or broken cache is rebuilt, never trusted
    arrays = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for s, (_, files) in splits.items():
            images = list(pool.map(_decode, (p for p, _ in files)))
            shapes = {tuple(im.shape) for im in images}
            if len(shapes) > 1:
                raise DataError(f"folder data set: mixed image sizes under {root}/{s}: {sorted(shapes)[:3]}; "
                                "resize them to one size first")
            arrays[f"{s}_x"] = torch.stack(images)
            arrays[f"{s}_y"] = torch.tensor([label for _, label in files], dtype=torch.long)
    if len({tuple(arrays[f"{s}_x"].shape[1:]) for s in splits}) > 1:
        raise DataError(f"folder data set: image sizes differ between splits under {root}")
    ds = DataSet(classes=classes, **arrays)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save({k: v for k, v in vars(ds).items() if v is not None}, tmp)
        os.replace(tmp, cache)
    except OSError:
        pass  # caching is an optimisation: an unwritable cache only costs the next load its time
    return ds


def load_dataset(name, root):
    """Read a data set into uint8 tensors; raises DataError with a one-line message."""
    if name in ("mnist", "fashion-mnist"):
        return _load_mnist(name, root)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root)
    if name == "folder":
        return _load_folder(root)
    raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------- splits

def _by_class(y, seed):
    """Per class, its indices in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    return [idx[torch.randperm(len(idx), generator=g)] for idx in
            (torch.nonzero(y == c).flatten() for c in torch.unique(y))]


def stratified_split(y, fraction, seed):
    """-> (train_idx, val_idx): round(fraction * N) validation examples, each class in proportion; seeded.

    Each class gets floor(fraction * n_c); the examples left over go to the classes with the largest remainders.
    """
    groups = _by_class(y, seed)
    exact = [fraction * len(idx) for idx in groups]
    quota = [int(e) for e in exact]
    leftover = int(round(fraction * len(y))) - sum(quota)
    for i in sorted(range(len(groups)), key=lambda i: quota[i] - exact[i])[:max(0, leftover)]:
        quota[i] += 1
    val = torch.cat([idx[:q] for idx, q in zip(groups, quota)])
    train = torch.cat([idx[q:] for idx, q in zip(groups, quota)])
    return train.sort().values, val.sort().values


def stratified_kfold(y, k, seed):
    """-> K (train_idx, val_idx) pairs; every example is in exactly one validation fold."""
    chunks = [idx.tensor_split(k) for idx in _by_class(y, seed)]
    folds = []
    for i in range(k):
        val = torch.cat([c[i] for c in chunks])
        train = torch.cat([c[j] for c in chunks for j in range(k) if j != i])
        folds.append((train.sort().values, val.sort().values))
    return folds


def stratified_subset(y, n, seed):
    """-> n indices with the class proportions of y."""
    if n >= len(y):
        return torch.arange(len(y))
    _, keep = stratified_split(y, n / len(y), seed)
    return keep


# ---------------------------------------------------------------- batched augmentation

def random_crop_flip(x, g, pad=4):
    """x (B, C, H, W) float -> same shape: random crop of the zero-padded image, then a random h-flip.

    g is a generator on x's device, so no random numbers cross from the host inside the step.
    """
    B, C, H, W = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B, 1), generator=g, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (B, 1), generator=g, device=dev)
    flip = torch.rand(B, 1, generator=g, device=dev) < 0.5
    rows = dy + torch.arange(H, device=dev)                                          # (B, H)
    cols = dx + torch.arange(W, device=dev)                                          # (B, W)
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_affine(x, g, degrees=10.0, shift=2.0):
    """x (B, C, H, W) float -> same shape: rotation within +-degrees, shift within +-shift pixels."""
    B, _, H, W = x.shape
    dev = x.device
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

class TensorLoader:
    """Batches from uint8 tensors held on `device`: slice, augment and normalise in one go per batch.

    The order and the augmentation of epoch e depend only on (seed, e), so a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(self, x, y, batch_size, mean, std, device, augment=None, shuffle=False, seed=0,
                 channels_last=False, shard=(0, 1)):
        self.rank, self.world = shard   # (rank, world size): this process's slice of every global batch
        self.x = x.to(device, non_blocking=True)
        self.y = y.to(device, non_blocking=True)
        self.batch_size, self.augment, self.shuffle, self.seed = batch_size, augment, shuffle, seed
        self.scale = (1 / (255 * std)).to(device).view(1, -1, 1, 1)
        self.shift = (-mean / std).to(device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch, self._next_step, self._g, self._seek = 0, 0, None, None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def position(self):
        """Where this epoch's iteration stands: the next step and the generator state (for a mid-epoch save)."""
        return {"epoch": self.epoch, "step": self._next_step, "generator": self._g.get_state()}

    def seek(self, position):
        """Make the next iteration start where `position` (from position()) left off."""
        self.epoch, self._seek = position["epoch"], position

    def __len__(self):
        full, rest = divmod(len(self.y), self.batch_size)
        return full + (rest >= self.world)  # under DDP a last batch too small for every rank is dropped

    def __iter__(self):
        # The order is the same on every rank; the augmentation stream differs per rank.
        g = torch.Generator(device=self.x.device).manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.y)
        order = (torch.randperm(n, generator=g, device=self.x.device) if self.shuffle
                 else torch.arange(n, device=self.x.device))
        if self.rank:
            g.manual_seed(self.seed * 100_003 + self.epoch + 7_919 * self.rank)
        start, self._g = 0, g
        if self._seek is not None:
            start = self._seek["step"]
            g.set_state(self._seek["generator"])
            self._seek = None
        for step in range(start, len(self)):
            self._next_step = step + 1
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            x = self.x[idx].float()                         # (B, C, H, W) in 0..255
            if self.augment is not None:
                x = self.augment(x, g)
            x = (x * self.scale + self.shift).contiguous(memory_format=self.memory_format)
            yield Batch(x, self.y[idx], idx)


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image
        img = self.x[i].permute(1, 2, 0).squeeze(-1).numpy()
        return self.transform(Image.fromarray(img)), self.y[i], i


class StandardLoader:
    """The textbook pipeline (per-sample PIL + torchvision transforms in DataLoader workers), for comparison
    and for data that do not fit in memory. Same interface as TensorLoader."""

    def __init__(self, x, y, batch_size, mean, std, device, augment=None, shuffle=False, seed=0,
                 num_workers=2, channels_last=False):
        from torchvision import transforms as T
        size = x.shape[-1]
        aug = []
        if augment is random_crop_flip:
            aug = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        elif augment is random_affine:
            aug = [T.RandomAffine(10, translate=(2 / size, 2 / size))]
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize(mean.tolist(), std.tolist())])
        self.seed, self.device = seed, device
        self.generator = torch.Generator()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loader = torch.utils.data.DataLoader(
            _PILDataset(x, y, tf), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
            generator=self.generator, pin_memory=str(device).startswith("cuda"),
            persistent_workers=num_workers > 0)

    def set_epoch(self, epoch):
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y, idx in self.loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield Batch(x, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True))


@dataclass
class Loaders:
    train: object
    val: Optional[object]
    test: object
    train_y: torch.Tensor   # labels of the training arrays, in loader index order (for teacher caches)
    norm: tuple             # ((mean per channel), (std per channel)) that every loader normalises with


def make_loaders(ds, cfg: DataConfig, seed, device, fold=None, channels_last=False, shard=(0, 1)):
    """Training / validation / test loaders.

    Validation: the data set's own val/ split if it has one, else a stratified seeded `val_split` of the
    training set (or `fold` = (train_idx, val_idx) for cross-validation). `subset` keeps n training examples.
    Inputs are normalised with cfg.norm if given, else with the per-channel statistics of the training split.
    """
    x, y = ds.train_x, ds.train_y
    if cfg.subset:
        keep = stratified_subset(y, cfg.subset, seed)
        x, y = x[keep], y[keep]
    if fold is not None:
        tr, va = fold
        (xv, yv), (x, y) = (x[va], y[va]), (x[tr], y[tr])
    elif ds.val_x is not None:
        xv, yv = ds.val_x, ds.val_y
    elif cfg.val_split > 0:
        tr, va = stratified_split(y, cfg.val_split, seed)
        (xv, yv), (x, y) = (x[va], y[va]), (x[tr], y[tr])
    else:
        xv = yv = None
    mean, std = (torch.tensor(v) for v in cfg.norm) if cfg.norm else channel_stats(x)
    Loader = TensorLoader if cfg.loader == "tensor" else StandardLoader
    extra = {"num_workers": cfg.num_workers} if cfg.loader == "standard" else {}

    if shard[1] > 1 and cfg.loader != "tensor":
        raise DataError("under torchrun only --loader tensor shards the data")

    def make(xs, ys, train):
        augment = augmentation_for(ds.in_shape) if train and cfg.augment else None
        kw = {**extra, "shard": shard} if train and shard[1] > 1 else extra
        return Loader(xs, ys, cfg.batch_size if train else max(cfg.batch_size, 1024), mean, std, device,
                      augment=augment, shuffle=train, seed=seed, channels_last=channels_last, **kw)

    return Loaders(make(x, y, True), make(xv, yv, False) if xv is not None else None,
                   make(ds.test_x, ds.test_y, False), y, (tuple(mean.tolist()), tuple(std.tolist())))
