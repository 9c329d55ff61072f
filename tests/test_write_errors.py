"""A write the system refuses (file-size limit, full disk, read-only file system, I/O error) is one line naming the
file, exit 1, also where torch.save wraps the OSError in a RuntimeError; the files written before stay intact."""

import builtins
import errno
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, messages

import cli
from checkpoint import save_checkpoint
from files import append_jsonl, atomic_write


def _limited(nbytes):
    def apply():  # in the child: the limit `ulimit -f` sets, and EFBIG instead of the signal's core dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_a_file_size_limit_is_one_line_naming_the_checkpoint(mnist_root, tmp_path):
    argv = [
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--hidden_size",
        "128",
        "--depth",
        "1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(
        [sys.executable, str(ROOT / "exercise1.py"), *map(str, argv), "--epochs", "1", "--wandb", "disabled"],
        preexec_fn=_limited(300_000),  # config.json and the metrics fit, last.pt (about 400 kB) does not
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr
    assert len(messages(p.stderr)) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "File too large" in p.stderr and str(tmp_path / "r" / "last.pt") in p.stderr, p.stderr
    assert (tmp_path / "r" / "config.json").exists() and not list((tmp_path / "r").glob(".*lab1-tmp*"))


def test_torch_saves_runtime_error_becomes_the_oserror_naming_the_file(tmp_path):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import torch; from checkpoint import save_checkpoint; "
        "save_checkpoint(sys.argv[2], {'w': torch.zeros(100_000)})"
    )
    p = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path / "big.pt")],
        preexec_fn=_limited(100_000),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "OSError: [Errno 27] File too large" in p.stderr, p.stderr
    assert str(tmp_path / "big.pt") in p.stderr.splitlines()[-1]


@pytest.mark.parametrize("code", [errno.EIO, errno.EROFS, errno.EFBIG])
def test_wrapped_or_bare_oserrors_name_the_final_path(tmp_path, code):
    def wrapped(tmp):
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None

    def bare(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(code, os.strerror(code))

    for write in (wrapped, bare):
        with pytest.raises(OSError) as e:
            atomic_write(tmp_path / "f.json", write)
        assert e.value.errno == code and e.value.filename == str(tmp_path / "f.json")
    assert not list(tmp_path.iterdir())


def test_a_runtime_error_of_another_kind_is_not_disguised(tmp_path):
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.pt", lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))


@pytest.mark.parametrize("code", [errno.EIO, errno.EROFS, errno.EFBIG, errno.ENOSPC, errno.EDQUOT])
def test_run_main_prints_one_line_exit_1(capsys, code):
    def main(argv):
        raise OSError(code, os.strerror(code), "/runs/r/last.pt")

    with pytest.raises(SystemExit) as e:
        cli.run_main(main, [])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "/runs/r/last.pt" in err and os.strerror(code) in err
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)


def test_a_metrics_line_refused_names_its_file(tmp_path, monkeypatch):
    real = builtins.open

    class Refusing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Refusing(real(p, *a, **k)))
    with pytest.raises(OSError) as e:
        append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1})
    assert e.value.filename == str(tmp_path / "metrics.jsonl")


def test_checkpoints_still_load_after_the_file_object_save(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"format": "x", "w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
