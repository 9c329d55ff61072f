import shutil
import time

import pytest
import torch

from conftest import SHARED_DATA, run_cli, write_cifar, write_folder, write_mnist
from dataloader import (DataConfig, DataError, load_dataset, make_loaders, random_affine, random_crop_flip,
                        stratified_kfold, stratified_split, stratified_subset)


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
                crop = padded[:, dy:dy + 8, dx:dx + 8]
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
    assert time.time() - t1 < 6 * 1.0  # cached: well under a second per 10k images (60k here)
    del t0
