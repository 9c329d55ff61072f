import os
import pickle
import re
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, _pickle, run_cli, write_cifar, write_folder, write_idx, write_mnist

from dataloader import (
    DataConfig,
    StandardLoader,
    TensorLoader,
    make_loaders,
    random_affine,
    random_crop_flip,
)
from datasets import DataSet, load_dataset
from errors import DataError
from splits import check_sizes, stratified_kfold, stratified_split, stratified_subset


def test_mnist_idx_gz(mnist_root):
    ds = load_dataset("mnist", mnist_root)
    assert ds.train_x.shape == (300, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (100, 1, 28, 28) and ds.num_classes == 10
    assert ds.train_y.max() == 9


def test_fashion_mnist(tmp_path):
    ds = load_dataset("fashion-mnist", write_mnist(tmp_path, folder="FashionMNIST"))
    assert ds.train_x.shape == (300, 1, 28, 28) and ds.classes[0] == "T-shirt/top"


def test_cifar10_pickles(cifar_root):
    ds = load_dataset("cifar10", cifar_root)
    assert ds.train_x.shape == (250, 3, 32, 32) and ds.test_x.shape == (100, 3, 32, 32)
    assert ds.classes == [f"c{i}" for i in range(10)]


def test_cifar100_pickles(tmp_path):
    ds = load_dataset("cifar100", write_cifar(tmp_path, classes=20))
    assert ds.num_classes == 20 and ds.train_x.shape[1:] == (3, 32, 32)


def test_image_folder_and_cache(tmp_path):
    root = write_folder(tmp_path / "f", classes=3, val=True)
    ds = load_dataset("folder", root)
    assert ds.train_x.shape == (60, 3, 16, 16) and ds.classes == ["class0", "class1", "class2"]
    assert ds.val_x.shape == (30, 3, 16, 16)
    assert list(root.glob(".lab1_cache_*.pt"))  # cached beside the data (writable folder)
    again = load_dataset("folder", root)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.val_y, ds.val_y)


def test_pack_cifar_keeps_the_folder_pixels(tmp_path):
    """bench/pack_cifar.py turns a CIFAR-like folder into CIFAR-10 pickles holding the same images."""
    root = write_folder(tmp_path / "f", classes=10, n_train=50, n_test=20, size=32)
    r = run_cli("bench/pack_cifar.py", root, tmp_path / "packed")
    assert r.returncode == 0, r.stderr
    folder, packed = load_dataset("folder", root), load_dataset("cifar10", tmp_path / "packed")
    assert torch.equal(packed.train_x, folder.train_x) and torch.equal(packed.train_y, folder.train_y)
    assert torch.equal(packed.test_x, folder.test_x) and packed.classes == folder.classes


def test_folder_cache_goes_to_user_cache_when_read_only(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "ro", classes=2, n_train=10, n_test=4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root.chmod(0o555)
    try:
        load_dataset("folder", root)
        assert not list(root.glob(".lab1_cache_*")) and list((tmp_path / "cache" / "lab1").glob("*.pt"))
    finally:
        root.chmod(0o755)


def test_missing_data_error_names_files(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*--data_root"):
        load_dataset("mnist", tmp_path)


def test_stratified_split_is_stratified_and_seeded():
    y = torch.arange(1000) % 4
    tr, va = stratified_split(y, 0.1, seed=3)
    assert len(va) == 100 and len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
    assert torch.bincount(y[va]).tolist() == [25] * 4
    assert torch.equal(stratified_split(y, 0.1, seed=3)[1], va)
    assert not torch.equal(stratified_split(y, 0.1, seed=4)[1], va)


def test_kfold_covers_each_example_once():
    y = torch.arange(200) % 5
    folds = stratified_kfold(y, 4, seed=0)
    vals = torch.cat([v for _, v in folds]).sort().values
    assert torch.equal(vals, torch.arange(200))
    for tr, va in folds:
        assert torch.bincount(y[va]).tolist() == [10] * 5 and len(tr) == 150


def test_subset_stratified():
    y = torch.arange(1000) % 10
    keep = stratified_subset(y, 100, seed=0)
    assert len(keep) == 100 and torch.bincount(y[keep]).tolist() == [10] * 10


def test_loader_batches_normalised_and_seeded(cifar_root):
    ds = load_dataset("cifar10", cifar_root)
    cfg = DataConfig(dataset="cifar10", batch_size=32, augment=True)
    a, b = make_loaders(ds, cfg, 0, "cpu"), make_loaders(ds, cfg, 0, "cpu")
    assert len(a.val.y) == 25 and len(a.train.y) == 225
    batches_a, batches_b = list(a.train), list(b.train)
    assert all(torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(batches_a, batches_b))
    a.train.set_epoch(1)
    assert not torch.equal(next(iter(a.train)).x, batches_a[0].x)  # another epoch, another order
    x = torch.cat([bt.x for bt in make_loaders(ds, DataConfig(augment=False), 0, "cpu").train])
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05


@pytest.mark.parametrize("aug,shape", [(random_crop_flip, (5, 3, 32, 32)), (random_affine, (5, 1, 28, 28))])
def test_augmentation_shape_and_determinism(aug, shape):
    x = torch.rand(shape) * 255
    out1 = aug(x, torch.Generator().manual_seed(1))
    out2 = aug(x, torch.Generator().manual_seed(1))
    assert out1.shape == x.shape and torch.equal(out1, out2)
    assert not torch.equal(out1, x)


def test_crop_flip_is_a_translated_or_flipped_copy():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float).reshape(2, 1, 8, 8) + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    for i in range(2):
        found = False
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        for dy in range(5):
            for dx in range(5):
                crop = padded[:, dy : dy + 8, dx : dx + 8]
                found |= torch.equal(out[i], crop) or torch.equal(out[i], crop.flip(-1))
        assert found


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").exists(), reason="../shared/data not present")
def test_real_mnist():
    ds = load_dataset("mnist", SHARED_DATA)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).min() > 5000


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg").exists(), reason="../shared/data not present")
def test_real_cifar10_jpeg_folder():
    t0 = time.time()
    ds = load_dataset("folder", SHARED_DATA / "cifar10-jpeg")
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10 and torch.bincount(ds.test_y).tolist() == [1000] * 10
    t1 = time.time()
    load_dataset("folder", SHARED_DATA / "cifar10-jpeg")
    assert time.time() - t1 < 30  # cached: one tensor file read, not 60,000 JPEG decodes (room for a busy machine)
    del t0


# ---------------------------------------------------------------- corrupt data: one-line DataError, never a traceback


def _gz_flip(f, middle):
    """Flip 4 bytes of the deflate stream: at its start (zlib.error), just after the gzip header's file name, or
    in its middle (a CRC error)."""
    b = bytearray(f.read_bytes())
    at = len(b) // 2 if middle else b.index(0, 10) + 1
    b[at : at + 4] = bytes(v ^ 0xFF for v in b[at : at + 4])
    f.write_bytes(bytes(b))


def _mnist_labels(root, labels):
    write_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", np.array(labels, dtype=np.uint8))


def _cifar_edit(root, file, edit, folder="cifar-10-batches-py"):
    """Replace a CIFAR pickle by edit(its dict)."""
    f = root / folder / file
    with open(f, "rb") as fh:
        d = pickle.load(fh)
    _pickle(f, edit(d))


def _labels_set(d, i, v, key=b"labels"):
    d[key][i] = v
    return d


class _RunsCode:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _evil(root, fn):
    """A data batch that, unpickled by pickle.load, would create root/PWNED."""
    marker = root / "PWNED"
    arg = f"touch {marker}" if fn is os.system else f"open({str(marker)!r}, 'w').close()"
    _pickle(root / "cifar-10-batches-py" / "data_batch_2", {b"data": _RunsCode(fn, arg), b"labels": [0]})


def _bomb(monkeypatch, pixels):
    """Make the 16x16 = 256-pixel images "bombs": PIL raises above 2 * pixels, and only warns above pixels."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)


MNIST_DAMAGE = [
    (
        "garbled gz (deflate header)",
        lambda r, m: _gz_flip(r / "MNIST/raw/train-labels-idx1-ubyte.gz", False),
        "corrupt data file",
    ),
    (
        "garbled gz (middle)",
        lambda r, m: _gz_flip(r / "MNIST/raw/train-images-idx3-ubyte.gz", True),
        "corrupt data file",
    ),
    ("label 12", lambda r, m: _mnist_labels(r, [12] + [0] * 299), "train label 12 is outside 0..9"),
    ("fewer labels", lambda r, m: _mnist_labels(r, [0] * 299), "300 images and 299 labels"),
    (
        "labels as images",
        lambda r, m: shutil.copy(
            r / "MNIST/raw/train-labels-idx1-ubyte.gz", r / "MNIST/raw/train-images-idx3-ubyte.gz"
        ),
        "not (N, H, W) images",
    ),
]
CIFAR_DAMAGE = [
    (
        "label 10",
        lambda r, m: _cifar_edit(r, "data_batch_1", lambda d: _labels_set(d, 0, 10)),
        "train label 10 is outside 0..9",
    ),
    (
        "label -1",
        lambda r, m: _cifar_edit(r, "test_batch", lambda d: _labels_set(d, 3, -1)),
        "test label -1 is outside 0..9",
    ),
    (
        "label a string",
        lambda r, m: _cifar_edit(r, "data_batch_1", lambda d: _labels_set(d, 0, "cat")),
        "a list of N integer labels",
    ),
    (
        "label 2**70",
        lambda r, m: _cifar_edit(r, "data_batch_2", lambda d: _labels_set(d, 1, 2**70)),
        "a list of N integer labels",
    ),
    (
        "fewer labels",
        lambda r, m: _cifar_edit(r, "data_batch_4", lambda d: {**d, b"labels": d[b"labels"][1:]}),
        "a list of N integer labels",
    ),
    (
        "data float32",
        lambda r, m: _cifar_edit(r, "data_batch_1", lambda d: {**d, b"data": d[b"data"] / 255}),
        "uint8 (N, 3072)",
    ),
    (
        "data wrong shape",
        lambda r, m: _cifar_edit(r, "data_batch_5", lambda d: {**d, b"data": d[b"data"][:, :100]}),
        "uint8 (N, 3072)",
    ),
    ("batch a list", lambda r, m: _cifar_edit(r, "data_batch_3", lambda d: list(d.values())), "expected a dict"),
    (
        "meta without names",
        lambda r, m: _cifar_edit(r, "batches.meta", lambda d: {b"num_vis": 3072}),
        "lists the class names",
    ),
    ("meta a list", lambda r, m: _cifar_edit(r, "batches.meta", lambda d: d[b"label_names"]), "lists the class names"),
    (
        "meta names ints",
        lambda r, m: _cifar_edit(r, "batches.meta", lambda d: {b"label_names": list(range(10))}),
        "lists the class names",
    ),
    (
        "meta 5 names for 10 labels",
        lambda r, m: _cifar_edit(r, "batches.meta", lambda d: {b"label_names": [b"a"] * 5}),
        "outside 0..4",
    ),
    ("pickle runs os.system", lambda r, m: _evil(r, os.system), "it would run code: posix.system"),
    ("pickle runs exec", lambda r, m: _evil(r, exec), "it would run code: builtins.exec"),
]
CIFAR100_DAMAGE = [
    (
        "fine label 20 of 20 classes",
        lambda r, m: _cifar_edit(r, "train", lambda d: _labels_set(d, 7, 20, b"fine_labels"), "cifar-100-python"),
        "train label 20 is outside 0..19",
    ),
]
FOLDER_DAMAGE = [
    ("decompression bomb", lambda r, m: _bomb(m, 100), "decompression bomb"),
    ("decompression bomb warning", lambda r, m: _bomb(m, 200), "decompression bomb"),
]
CORRUPT = (
    [("mnist", write_mnist, *c) for c in MNIST_DAMAGE]
    + [("cifar10", write_cifar, *c) for c in CIFAR_DAMAGE]
    + [("cifar100", lambda r: write_cifar(r, classes=20), *c) for c in CIFAR100_DAMAGE]
    + [("folder", lambda r: write_folder(r, classes=2, n_train=6, n_test=4), *c) for c in FOLDER_DAMAGE]
)


@pytest.mark.parametrize("dataset,write,case,damage,message", CORRUPT, ids=[f"{c[0]}: {c[2]}" for c in CORRUPT])
def test_corrupt_data_is_a_one_line_data_error(tmp_path, monkeypatch, dataset, write, case, damage, message):
    root = write(tmp_path / "data")
    damage(root, monkeypatch)
    with pytest.raises(DataError) as e:
        load_dataset(dataset, root)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (root / "PWNED").exists()
    if dataset == "folder":
        assert str(root / "train") in str(e.value) and ".png" in str(e.value)  # names the file


def test_unpickler_still_reads_every_protocol(tmp_path):
    """The restricted unpickler reads numpy arrays as pickle protocols 2 (Python 2's CIFAR), 4 and 5 write them."""
    root = write_cifar(tmp_path)
    for protocol, f in zip((2, 4, 5), ("data_batch_1", "batches.meta", "test_batch")):
        path = root / "cifar-10-batches-py" / f
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    ds, fresh = load_dataset("cifar10", root), load_dataset("cifar10", write_cifar(tmp_path / "b"))
    assert torch.equal(ds.train_x, fresh.train_x) and torch.equal(ds.test_y, fresh.test_y)
    assert ds.classes == fresh.classes


# ---------------------------------------------------------------- sizes that would leave a split empty


def _tiny(counts, n_val=0, shape=(1, 4, 4)):
    """A DataSet whose class c has counts[c] training examples (labels interleaved), 7 test examples."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    x = torch.randint(0, 255, (len(y), *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    val = {"val_x": x[:n_val].clone(), "val_y": y[:n_val].clone()} if n_val else {}
    return DataSet(x, y, x[:7].clone(), y[:7].clone(), [f"c{i}" for i in range(len(counts))], **val)


UNEVEN = [13, 7, 5, 9, 11, 6, 8, 10, 12, 19]  # 100 examples, 10 classes, smallest 5


@pytest.mark.parametrize(
    "counts,n_val,kw,k_folds,message",
    [
        (UNEVEN, 0, {"subset": 5}, 0, "--subset 5 is smaller than the number of classes (10)"),
        (UNEVEN, 0, {"subset": 101}, 0, "--subset 101 is larger than the training set (100): use 10..100"),
        ([4, 4, 4], 0, {"subset": 5, "val_split": 0.1}, 0, "--val_split 0.1 of 5 training examples is 0 examples"),
        (UNEVEN, 0, {"val_split": 0.004}, 0, "--val_split 0.004 of 100 training examples is 0 examples"),
        (UNEVEN, 0, {"subset": 20, "val_split": 0.99}, 0, "--val_split 0.99 leaves 0 of the 20 training examples"),
        (UNEVEN, 0, {"subset": 20, "val_split": 0.6}, 0, "--val_split 0.6 leaves 8 of the 20 training examples"),
        (UNEVEN, 0, {"val_split": 0}, 6, "--k_folds 6 is more than the 5 examples of the smallest class"),
        (UNEVEN, 0, {"subset": 30}, 3, "--k_folds 3 is more than the 1 examples of the smallest class (30 training"),
        ([3, 3], 0, {}, 7, "--k_folds 7 is more than the 3 examples"),
        ([1, 1, 1], 2, {}, 0, "only 1 training examples for 3 classes"),
    ],
)
def test_check_sizes_refuses(counts, n_val, kw, k_folds, message):
    ds = _tiny(counts, n_val)
    if n_val:  # a data set whose own train split has fewer examples than classes
        ds.train_x, ds.train_y = ds.train_x[:1], ds.train_y[:1]
    with pytest.raises(DataError) as e:
        check_sizes(ds, DataConfig(**kw), seed=0, k_folds=k_folds)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    if not k_folds:  # make_loaders refuses them too, before building anything
        with pytest.raises(DataError, match=re.escape(message)):
            make_loaders(ds, DataConfig(**kw), 0, "cpu")


@pytest.mark.parametrize(
    "counts,n_val,kw,expected",
    [
        (UNEVEN, 0, {}, {"train": 90, "val": 10, "test": 7}),
        (UNEVEN, 0, {"val_split": 0}, {"train": 100, "val": 0, "test": 7}),
        (UNEVEN, 0, {"subset": 37, "val_split": 0.3}, {"train": 26, "val": 11, "test": 7}),
        (UNEVEN, 0, {"subset": 100, "val_split": 0.25}, {"train": 75, "val": 25, "test": 7}),
        (UNEVEN, 0, {"subset": 10, "val_split": 0}, {"train": 10, "val": 0, "test": 7}),
        (UNEVEN, 0, {"subset": 12, "val_split": 0.1}, {"train": 11, "val": 1, "test": 7}),
        (UNEVEN, 6, {"subset": 50, "val_split": 0.5}, {"train": 50, "val": 6, "test": 7}),  # its own val/ split
    ],
)
def test_check_sizes_equal_what_make_loaders_uses(counts, n_val, kw, expected):
    ds, cfg = _tiny(counts, n_val), DataConfig(batch_size=8, **kw)
    assert check_sizes(ds, cfg, seed=3) == expected
    loaders = make_loaders(ds, cfg, 3, "cpu")
    used = {"train": len(loaders.train.y), "val": len(loaders.val.y) if loaders.val else 0, "test": len(loaders.test.y)}
    assert used == expected
    assert sum(len(b.y) for b in loaders.train) == expected["train"]


@pytest.mark.parametrize(
    "counts,subset,k", [(UNEVEN, 0, 5), (UNEVEN, 0, 2), (UNEVEN, 37, 2), (UNEVEN, 64, 3), ([50, 1, 49], 10, 5)]
)  # the subset leaves class 1 out
def test_check_sizes_per_fold(counts, subset, k):
    ds, cfg = _tiny(counts), DataConfig(subset=subset)
    sizes = check_sizes(ds, cfg, seed=1, k_folds=k)
    y = ds.train_y[stratified_subset(ds.train_y, subset, 1)] if subset else ds.train_y  # as cross_validate does
    folds = stratified_kfold(y, k, 1)
    assert sizes["train"] == [len(tr) for tr, _ in folds] and sizes["val"] == [len(va) for _, va in folds]
    loaders = make_loaders(ds, cfg, 1, "cpu", fold=folds[-1])
    assert (len(loaders.train.y), len(loaders.val.y)) == (sizes["train"][-1], sizes["val"][-1])


# ---------------------------------------------------------------- batches: the merge rule, exact resume


def _loader(kind, n, bs, world=1, rank=0, **kw):
    ds = _tiny([n - n // 2, n // 2], shape=(3, 8, 8))
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    if kind == "tensor":
        return TensorLoader(
            ds.train_x, ds.train_y, bs, mean, std, "cpu", shuffle=True, seed=5, shard=(rank, world), **kw
        )
    return StandardLoader(ds.train_x, ds.train_y, bs, mean, std, "cpu", shuffle=True, seed=5, **kw)


@pytest.mark.parametrize("kind", ["tensor", "standard"])
@pytest.mark.parametrize(
    "n,bs,sizes",
    [
        (15, 7, [7, 8]),
        (16, 7, [7, 7, 2]),
        (14, 7, [7, 7]),
        (1, 7, [1]),
        (5, 7, [5]),
        (8, 7, [8]),
        (71, 7, [7] * 9 + [8]),
    ],
)
def test_a_last_batch_of_one_joins_the_previous_one(kind, n, bs, sizes):
    loader = _loader(kind, n, bs, **({"num_workers": 0} if kind == "standard" else {}))
    batches = list(loader)
    assert [len(b.y) for b in batches] == sizes and len(loader) == len(sizes)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5 * 100_003))  # epoch 0
    assert torch.equal(torch.cat([b.idx for b in batches]), order)  # every example once, in the seeded order
    if n > 1:
        bn = torch.nn.BatchNorm2d(3).train()
        for b in batches:
            bn(b.x)  # would raise "Expected more than 1 value per channel" on a batch of one


@pytest.mark.parametrize(
    "n,bs,world,per_rank",
    [
        (19, 7, 3, [[3, 4], [2, 4], [2, 4]]),  # global batches 7, 5: 5 < 2 * 3 ranks, merged into 12
        (20, 7, 3, [[3, 3, 2], [2, 2, 2], [2, 2, 2]]),  # 7, 7, 6: kept
        (17, 8, 2, [[4, 5], [4, 4]]),  # 8, 8, 1: merged (was dropped before)
        (19, 8, 2, [[4, 6], [4, 5]]),  # 8, 8, 3: merged (was a batch of 2 + 1)
        (20, 8, 2, [[4, 4, 2], [4, 4, 2]]),  # 8, 8, 4: kept
    ],
)
def test_ddp_shards_follow_the_merge_rule(n, bs, world, per_rank):
    shards = [_loader("tensor", n, bs, world, r) for r in range(world)]
    batches = [list(s) for s in shards]
    assert [[len(b.y) for b in rank] for rank in batches] == per_rank
    assert [len(s) for s in shards] == [len(sizes) for sizes in per_rank]
    assert sorted(torch.cat([b.idx for rank in batches for b in rank]).tolist()) == list(range(n))  # nothing dropped


def test_tensor_loader_batches_unchanged_where_no_merge_happens():
    """Published results depend on the batches: where nothing is merged they are those of the plain slicing."""
    ds = _tiny([20, 20, 19], shape=(3, 8, 8))
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    loader = TensorLoader(ds.train_x, ds.train_y, 8, mean, std, "cpu", augment=random_crop_flip, shuffle=True, seed=2)
    loader.set_epoch(3)
    g = torch.Generator().manual_seed(2 * 100_003 + 3)
    order = torch.randperm(59, generator=g)
    for k, b in enumerate(loader):
        idx = order[k * 8 : (k + 1) * 8]
        x = random_crop_flip(ds.train_x[idx].float(), g)
        assert torch.equal(b.idx, idx) and torch.allclose(b.x, (x / 255 - 0.5) / 0.25, atol=1e-5)
    assert k == 7 and len(b.y) == 3


def _epoch_batches(loader, epoch, start=0, stop=None):
    loader.set_epoch(epoch)
    if start:
        loader.seek({"epoch": epoch, "step": start})
    out = []
    for b in loader:
        out.append(b)
        if len(out) + start == stop:
            break
    return out


def test_standard_loader_resumes_exactly_whatever_the_workers():
    """Epoch 1 restarted at step 2 (after a save, in a new process) gives the uninterrupted batches, with 0 or 2
    workers; the augmentation depends on the epoch, and the main process's RNG is left alone."""
    ds = _tiny([11, 10], shape=(3, 8, 8))
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)

    def make(workers):
        return StandardLoader(
            ds.train_x,
            ds.train_y,
            5,
            mean,
            std,
            "cpu",
            augment=random_crop_flip,
            shuffle=True,
            seed=4,
            num_workers=workers,
        )

    rng = torch.get_rng_state()
    ref = make(0)
    epoch0, epoch1 = _epoch_batches(ref, 0), _epoch_batches(ref, 1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [len(b.y) for b in epoch1] == [5, 5, 5, 6] and len(ref) == 4  # 21 = 5 + 5 + 5 + 6: the 1 merged

    def same(a, b):
        return len(a) == len(b) and all(torch.equal(p.x, q.x) and torch.equal(p.idx, q.idx) for p, q in zip(a, b))

    x0, x1 = ({i: x for b in e for i, x in zip(b.idx.tolist(), b.x)} for e in (epoch0, epoch1))
    assert not all(torch.equal(x0[i], x1[i]) for i in x0)  # another epoch, another augmentation of each image
    killed = make(2)
    _epoch_batches(killed, 0)
    assert same(_epoch_batches(killed, 1, stop=2), epoch1[:2])
    position = killed.position()
    assert position == {"epoch": 1, "step": 2}
    for resumed in (make(2), make(0), killed):  # a new process (fresh workers), no workers, the same persistent ones
        resumed.seek(position)
        assert same(list(resumed), epoch1[2:]) and resumed.position()["step"] == 4
        assert same(_epoch_batches(resumed, 1), epoch1)  # the seek lasts one iteration
