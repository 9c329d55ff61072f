"""Data sets as uint8 tensors on the training device, sliced, augmented and normalised a batch at a time.

    ds = load_dataset("mnist", "./data")            # DataSet of uint8 (N, C, H, W) tensors
    sizes = check_sizes(ds, DataConfig(), seed=0)    # {"train": n, "val": n, "test": n}, or a DataError
    loaders = make_loaders(ds, DataConfig(), seed=0, device="cpu")
    for batch in loaders.train: ...                  # Batch(x float (B, C, H, W), y (B,), idx (B,))

mnist, fashion-mnist (IDX .gz files) and cifar10, cifar100 (python pickles) are fetched by torchvision into
data_root when missing; `folder` is an ImageFolder tree ROOT/{train,test[,val]}/<class>/*, decoded once and
cached as one tensor file. The test set is only ever read by the final evaluation.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from datasets import DATASETS, check_norm
from errors import DataError
from flags import flag, fraction, nonneg_int, pos_int, processes
from splits import check_sizes, examples_tested, training_positions


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
    test_subset: int = flag(
        0,
        "evaluate on N test examples only, stratified and the same N for every run and seed (quick checks; "
        "results and tables say so); 0 = the whole test set",
        type=nonneg_int,
        metavar="N",
    )
    fold: int = 0  # which fold (1..k_folds) a k-fold child trains on
    norm: tuple = ()  # (mean, std) per channel, in [0, 1] units; () = from the training split

    def check_restored(self):
        """Read back from a run folder: the fields no flag sets must fit the others."""
        if self.k_folds == 1 or not 0 <= self.fold <= self.k_folds:
            raise ValueError(f"fold {self.fold} of k_folds {self.k_folds}")
        if self.norm:
            check_norm(self.norm)


class Batch(NamedTuple):
    x: torch.Tensor  # float (B, C, H, W), normalised
    y: torch.Tensor  # int64 (B,)
    idx: torch.Tensor  # int64 (B,): positions in the loader's arrays (for cached teacher logits)


# ---------------------------------------------------------------- reading the on-disk formats


# ---------------------------------------------------------------- splits


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
    train_y: torch.Tensor  # labels of the training arrays, in loader index order
    norm: tuple  # ((mean per channel), (std per channel)) that every loader normalises with
    test_y: Optional[torch.Tensor] = None  # labels of the test examples evaluated (all, or --test_subset's)


def make_loaders(ds, cfg: DataConfig, seed, device, fold=None, channels_last=False, shard=(0, 1)):
    """Training / validation / test loaders. Validation: `fold` = (train_idx, val_idx) if given, else the data set's
    own val/ split, else a stratified seeded `val_split`. Normalised with cfg.norm, else the training split's stats.
    Sizes that would leave a split empty raise DataError (check_sizes; callers check folds before)."""
    if fold is None:
        check_sizes(ds, cfg, seed)
    pos, val = training_positions(ds, cfg, seed, fold)
    x, y = (ds.train_x, ds.train_y) if len(pos) == len(ds.train_y) else (ds.train_x[pos], ds.train_y[pos])
    xv, yv = (ds.val_x, ds.val_y) if val is None else (ds.train_x[val], ds.train_y[val])
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
        make(*examples_tested(ds, cfg), False),
        y,
        (tuple(mean.tolist()), tuple(std.tolist())),
        examples_tested(ds, cfg)[1],
    )
