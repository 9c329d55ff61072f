"""The bad-input catalogue: broken data, folders and checkpoints give one line and exit 2, nothing half-written."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_cifar, write_folder, write_mnist
from PIL import Image

QUIET = ["--wandb", "disabled", "--epochs", "1"]


def assert_one_line_exit_2(p, message, save_dir=None):
    assert p.returncode == 2, (p.stdout, p.stderr)
    shown = [line.rsplit("\r", 1)[-1] for line in p.stderr.split("\n")]  # what a terminal keeps: a cleared bar, no
    assert len([line for line in shown if line.strip()]) == 1 and "Traceback" not in p.stderr, p.stderr
    assert message in p.stderr, p.stderr
    if save_dir is not None:
        assert not Path(save_dir).exists() or not any(Path(save_dir).iterdir())


def _mnist(tmp_path, damage):
    root = write_mnist(tmp_path / "data")
    damage(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    return root


@pytest.mark.parametrize(
    "name,damage,message",
    [
        ("truncated gz", lambda f: f.write_bytes(f.read_bytes()[:200]), "corrupt data file"),
        ("not gzip", lambda f: f.write_bytes(b"hello, not gzip at all"), "corrupt data file"),
        ("bad magic", lambda f: f.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 100)), "bad magic"),
        ("short data", lambda f: f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-10])), "bytes of data"),
    ],
)
def test_corrupt_mnist(tmp_path, name, damage, message):
    root = _mnist(tmp_path, damage)
    p = run_cli("exercise1.py", "--data_root", root, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, message, tmp_path / "runs")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cifar_pickle(tmp_path, damage):
    root = write_cifar(tmp_path / "data")
    f = root / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(b"garbage!" * 10 if damage == "garbage" else f.read_bytes()[:1000])
    p = run_cli(
        "exercise1.py",
        "--model",
        "resnet8",
        "--dataset",
        "cifar10",
        "--data_root",
        root,
        "--save_dir",
        tmp_path / "runs",
        *QUIET,
    )
    assert_one_line_exit_2(p, "corrupt data file", tmp_path / "runs")


def test_corrupt_image_in_folder(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "train" / "class1" / "0001.png").write_bytes(b"\x89PNG not really")
    p = run_cli("exercise1.py", "--dataset", "folder", "--data_root", root, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, "corrupt image", tmp_path / "runs")


def test_folder_with_one_class(tmp_path):
    root = write_folder(tmp_path / "imgs", classes=1)
    p = run_cli("exercise1.py", "--dataset", "folder", "--data_root", root, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, "at least 2 are needed", tmp_path / "runs")


def test_folder_without_images(tmp_path):
    root = write_folder(tmp_path / "imgs", classes=2)
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    p = run_cli("exercise1.py", "--dataset", "folder", "--data_root", root, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, "no images", tmp_path / "runs")


def test_folder_with_mixed_sizes(tmp_path):
    root = write_folder(tmp_path / "imgs", classes=2)
    Image.new("RGB", (20, 20)).save(root / "train" / "class0" / "big.png")
    p = run_cli("exercise1.py", "--dataset", "folder", "--data_root", root, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, "mixed image sizes", tmp_path / "runs")


def test_folder_not_an_image_folder(tmp_path):
    p = run_cli("exercise1.py", "--dataset", "folder", "--data_root", tmp_path, "--save_dir", tmp_path / "runs", *QUIET)
    assert_one_line_exit_2(p, "ImageFolder layout", tmp_path / "runs")


def test_unwritable_save_dir(mnist_root, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    p = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", blocked / "runs", *QUIET)
    assert_one_line_exit_2(p, "is not a writable folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", ro / "runs", *QUIET)
        assert_one_line_exit_2(p, "is not a writable folder")
        assert not (ro / "runs").exists()
    finally:
        ro.chmod(0o755)


def test_checkpoint_of_another_class_count(tmp_path):
    c10, c20 = write_cifar(tmp_path / "c10"), write_cifar(tmp_path / "c20", classes=20)
    p = run_cli(
        "exercise1.py",
        "--model",
        "resnet8",
        "--dataset",
        "cifar100",
        "--data_root",
        c20,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    p = run_cli(
        "exercise2.py",
        "--data_root",
        c10,
        "--save_dir",
        tmp_path / "kd",
        "--teacher_ckpt",
        tmp_path / "r" / "best.pt",
        *QUIET,
    )
    assert_one_line_exit_2(p, "trained on 20 classes", tmp_path / "kd")


def test_same_name_at_the_same_time_never_shares_a_folder(mnist_root, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "exercise1.py"),
        "--data_root",
        str(mnist_root),
        "--save_dir",
        str(tmp_path),
        "--run_name",
        "same",
        "--wandb",
        "disabled",
        "--epochs",
        "1",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    codes = sorted(p.wait(timeout=200) for p in procs)
    assert codes == [0, 2]
    auto = [
        sys.executable,
        str(ROOT / "exercise1.py"),
        "--data_root",
        str(mnist_root),
        "--save_dir",
        str(tmp_path / "auto"),
        "--wandb",
        "disabled",
        "--epochs",
        "1",
    ]
    procs = [
        subprocess.Popen(auto, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=200)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] != outs[1]


def test_exercise2_under_torchrun_is_refused(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    p = run_cli("exercise2.py", "--data_root", tmp_path / "nodata", "--save_dir", tmp_path / "runs", *QUIET, env=env)
    assert_one_line_exit_2(p, "runs in one process", tmp_path / "runs")
