"""Tiny data sets written in the real on-disk formats, and a helper that runs the CLI as a user would."""

import contextlib
import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_images(n, classes, shape, seed):
    """uint8 images (n, *shape) whose class shows as a bright block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h, w = shape[-2], shape[-1]
    for i, c in enumerate(y):
        r, col = (c * 3) % (h - 4), (c * 5) % (w - 4)
        x[i, ..., r : r + 4, col : col + 4] = 220
    return x, y.astype(np.uint8)


def write_idx(path, arr):
    dims = arr.shape
    header = struct.pack(">I", 0x0800 | len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def write_mnist(root, folder="MNIST", n_train=300, n_test=100):
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    xtr, ytr = make_images(n_train, 10, (28, 28), 0)
    xte, yte = make_images(n_test, 10, (28, 28), 1)
    for name, arr in [
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ]:
        write_idx(raw / f"{name}.gz", arr)
    return Path(root)


def write_cifar(root, classes=10, n_train=250, n_test=100):
    if classes == 10:
        base = Path(root) / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        xtr, ytr = make_images(n_train, 10, (3, 32, 32), 2)
        for i, (xs, ys) in enumerate(zip(np.array_split(xtr, 5), np.array_split(ytr, 5)), start=1):
            _pickle(base / f"data_batch_{i}", {b"data": xs.reshape(len(xs), -1), b"labels": ys.tolist()})
        xte, yte = make_images(n_test, 10, (3, 32, 32), 3)
        _pickle(base / "test_batch", {b"data": xte.reshape(len(xte), -1), b"labels": yte.tolist()})
        _pickle(base / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        base = Path(root) / "cifar-100-python"
        base.mkdir(parents=True, exist_ok=True)
        for split, n, seed in (("train", n_train, 4), ("test", n_test, 5)):
            x, y = make_images(n, classes, (3, 32, 32), seed)
            _pickle(base / split, {b"data": x.reshape(n, -1), b"fine_labels": y.tolist()})
        _pickle(base / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(classes)]})
    return Path(root)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_folder(root, classes=3, n_train=60, n_test=30, size=16, val=False):
    from PIL import Image

    root = Path(root)
    splits = [("train", n_train, 6), ("test", n_test, 7)] + ([("val", n_test, 8)] if val else [])
    for split, n, seed in splits:
        x, y = make_images(n, classes, (3, size, size), seed)
        for i, (img, c) in enumerate(zip(x, y)):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder") / "imgs")


@contextlib.contextmanager
def lock_held_elsewhere(folder, name=".lock", shared=False):
    """Another process holds the run lock of `folder` (as a process training in it would; shared on .busy: one
    working in it, e.g. an exercise2 run between its phases) while the block runs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from files import RunLock; l = RunLock(sys.argv[2], sys.argv[3], sys.argv[4] == "
            "'True'); print(l.held, flush=True); time.sleep(120)",
            str(ROOT),
            str(folder),
            name,
            str(shared),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        yield
    finally:
        holder.kill()
        holder.wait()


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli(script, *args, cwd=None, timeout=300, env=None, process=False):
    """Run `python script args...` as a user would: in this process (fast: torch is imported once) through the
    script's own entry point and exit-code contract, or with process=True in a subprocess, for the tests whose
    point is a process boundary (signals, SIGKILL, torchrun). Returns returncode, stdout and stderr."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update({"PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **(env or {})})
    if process:
        p = subprocess.run(
            [sys.executable, str(ROOT / script), *map(str, args)],
            cwd=cwd or ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        return Result(p.returncode, p.stdout, p.stderr)
    import contextlib
    import importlib
    import io
    import signal

    from cli import run_main

    folder = str((ROOT / script).parent)  # as `python script` would find its own folder's modules
    if folder not in sys.path:
        sys.path.append(folder)
    module = importlib.import_module(Path(script).stem)
    out, err = io.StringIO(), io.StringIO()
    saved = (
        dict(os.environ),
        list(sys.argv),
        os.getcwd(),
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
    )
    os.environ.clear()
    os.environ.update(full_env)
    sys.argv = [script, *map(str, args)]
    os.chdir(cwd or ROOT)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(module.main, [*map(str, args)])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        sys.argv = saved[1]
        os.chdir(saved[2])
        signal.signal(signal.SIGINT, saved[3])
        signal.signal(signal.SIGTERM, saved[4])
    return Result(code, out.getvalue(), err.getvalue())


def messages(stderr):
    """The lines of stderr that are not progress bars (tqdm draws them with \\r, and clears them)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
