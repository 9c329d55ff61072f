"""Divergence, signals and process-level faults, through the CLI; real processes where the boundary is the point.

Waiting is for a file or a line to appear, never for a fixed time.
"""

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, lock_held_elsewhere, run_cli

QUIET = ["--wandb", "disabled"]


def start(args, **kw):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "exercise1.py"), *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(check, proc, timeout=120):
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def printed_command(err):
    """The command the stop message says to run, as argv."""
    cmd = err.rsplit("continue with: ", 1)[1].strip()
    return shlex.split(cmd)[2:]  # drop "python exercise1.py"


def metrics(run):
    return [
        {k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_nan_loss_stops_with_exit_3(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--epochs",
        "3",
        "--optimizer",
        "sgd",
        "--lr",
        "1e5",
        *QUIET,
    )
    assert p.returncode == 3, (p.stdout, p.stderr)
    last = p.stderr.strip().splitlines()[-1]  # after the progress bars, one line
    assert "diverged" in last and "--lr" in last and "Traceback" not in p.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "failed"
    assert ("best.pt" in p.stderr) == (tmp_path / "r" / "best.pt").exists()  # never claims a file that is not there


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])  # SIGTERM: the tests below
def test_signal_mid_epoch_saves_and_the_printed_command_resumes_exactly(mnist_root, tmp_path, sig, code):
    """SIGTERM / Ctrl-C in the middle of an epoch: last.pt holds that very step, the last line says how to go
    on, and that command, run as printed, ends exactly like an uninterrupted run."""
    args = [
        "--data_root",
        mnist_root,
        "--epochs",
        "2",
        "--scheduler",
        "--dropout",
        "0.2",
        "--augment",
        "--batch_size",
        "4",
        "--hidden_size",
        "512",
        *QUIET,
    ]
    full = run_cli("exercise1.py", *args, "--save_dir", tmp_path / "a", "--run_name", "r")
    assert full.returncode == 0, full.stderr
    run = tmp_path / "b" / "r"
    proc = start([*args, "--save_dir", tmp_path / "b", "--run_name", "r"])
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text(), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "step" in err and len(err.strip().splitlines()[-1:]) == 1 and "Traceback" not in err
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["accum"]["step"] > 0
    resumed = run_cli("exercise1.py", *printed_command(err))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, step" in resumed.stdout
    assert metrics(run) == metrics(tmp_path / "a" / "r")
    a, b = (json.loads((p / "summary.json").read_text()) for p in (tmp_path / "a" / "r", run))
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])
    ends = [line for line in (run / "command.txt").read_text().splitlines() if line.startswith("# ended ")]
    assert [e.split(": ")[1].split(",")[0] for e in ends] == [f"exit code {code}", "exit code 0"]  # each command's end


@pytest.mark.parametrize("script", ["exercise1.py", "exercise2.py"])
def test_ctrl_c_while_torch_loads_ends_quietly(script):
    """Ctrl-C in the first seconds, while the imports run, before run_main's handlers: no traceback."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text(), proc)  # inside `import torch`
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGINT, 130) and "Traceback" not in err, (proc.returncode, err)


def test_sigterm_before_the_first_checkpoint_resumes_from_the_start(mnist_root, tmp_path):
    """A stop in the first epoch, before any last.pt: the printed command still works (it starts the run over)."""
    proc = start(
        [
            "--data_root",
            mnist_root,
            "--save_dir",
            tmp_path,
            "--run_name",
            "r",
            "--epochs",
            "1",
            "--batch_size",
            "2",
            "--hidden_size",
            "512",
            "--depth",
            "3",
            *QUIET,
        ]
    )
    wait_for(lambda: (tmp_path / "r" / "config.json").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    again = run_cli("exercise1.py", *printed_command(err))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"


def test_sigterm_in_a_study_prints_a_command_that_continues_it(mnist_root, tmp_path):
    proc = start(
        [
            "--study",
            "mlp_depth",
            "--depths",
            "2",
            "--epochs",
            "50",
            "--batch_size",
            "8",
            "--data_root",
            mnist_root,
            "--save_dir",
            tmp_path,
            *QUIET,
        ]
    )
    wait_for(lambda: (tmp_path / "mlp_depth" / "plain2_seed0" / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "--resume" in err, err
    assert printed_command(err) == ["--resume", str(tmp_path / "mlp_depth")]


def test_second_process_on_the_same_run_is_refused(mnist_root, tmp_path):
    from files import RunLock

    ok = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", *QUIET
    )
    assert ok.returncode == 0
    with lock_held_elsewhere(tmp_path / "r"):
        p = run_cli("exercise1.py", "--resume", tmp_path / "r", "--epochs", "2")
        assert p.returncode == 2 and "another process" in p.stderr, p.stderr
        assert len(metrics(tmp_path / "r")) == 1
    assert RunLock(tmp_path / "r").held  # released by the operating system when its holder died


def test_checkpoint_write_failing_halfway_leaves_the_old_one(tmp_path):
    from checkpoint import load_file, save_checkpoint
    from files import atomic_write

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "lab1-checkpoint-v1", "model": {"w": torch.ones(3)}})

    def dies_halfway(tmp):
        with open(tmp, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("some I/O error")

    with pytest.raises(OSError):
        atomic_write(path, dies_halfway)
    assert torch.equal(load_file(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_disk_full_is_one_line_naming_the_path_and_the_space(mnist_root, tmp_path, monkeypatch):
    import checkpoint

    real = checkpoint.torch.save

    def full(obj, f, *a, **k):
        name = str(getattr(f, "name", f))  # save_checkpoint hands torch.save an open file
        if name.endswith(f"-{os.getpid()}") and ".last.pt.lab1-tmp-" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    p = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", *QUIET
    )
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "no space left on device" in line and "last.pt" in line and "Traceback" not in p.stderr
    assert re.search(r"about [\d.]+ [KMG]iB needed", line), line  # the space it needed (a finished run's last.pt:
    # without the optimizer's state, under 1 MiB here)
    assert not list((tmp_path / "r").glob(".*tmp*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own (needs root and a mountable tmpfs, else the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", disk])


@pytest.mark.parametrize("full_at", ["checkpoint", "figures"])
def test_a_really_full_disk_is_one_line_naming_a_file(mnist_root, small_disk, tmp_path, full_at):
    """torch.save on a full disk raises RuntimeErrors of its own, matplotlib OSErrors without a file name."""
    args = [
        "--data_root",
        mnist_root,
        "--run_name",
        "r",
        "--epochs",
        "1",
        "--hidden_size",
        "32",
        "--depth",
        "2",
        *QUIET,
    ]
    free = 100 * 1024  # less than last.pt
    if full_at == "figures":  # room for everything written before the first figure
        assert run_cli("exercise1.py", *args, "--save_dir", tmp_path / "ok").returncode == 0
        free = sum(
            4096 + f.stat().st_size
            for f in (tmp_path / "ok" / "r").iterdir()
            if f.suffix in (".pt", ".json", ".jsonl", ".txt")
        )
    (small_disk / "filler").write_bytes(bytes(2**20 - free - 16 * 1024))
    p = run_cli("exercise1.py", *args, "--save_dir", small_disk, process=True)
    line = p.stderr.strip().splitlines()[-1].split("\r")[-1]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "no space left on device" in line.lower() and str(small_disk / "r") in line and "free" in line, line
    assert (".png" in line) == (full_at == "figures"), line
    assert not list((small_disk / "r").glob(".*tmp*"))


def test_stale_temporary_files_of_killed_writers_are_removed(mnist_root, tmp_path):
    ok = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", *QUIET
    )
    assert ok.returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "r" / f".last.pt.lab1-tmp{dead.pid}"
    stale.write_bytes(b"half")
    users = [tmp_path / f".notes.tmp{dead.pid}", tmp_path / "r" / f".draft.tmp{dead.pid}"]  # not lab1's: kept
    for f in users:
        f.write_text("mine")
    assert run_cli("exercise1.py", "--resume", tmp_path / "r", "--epochs", "2").returncode == 0
    assert (
        run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--epochs", "1", *QUIET).returncode
        == 0
    )
    assert not stale.exists() and all(f.read_text() == "mine" for f in users)


def test_only_this_hosts_stale_temporary_files_are_removed(tmp_path):
    """A shared folder: another machine's writer may be alive with any PID, so its temporary files stay."""
    from files import _host, remove_stale_tmp, tmp_name

    assert tmp_name(tmp_path / "last.pt").name == f".last.pt.lab1-tmp-{_host()}-{os.getpid()}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = [tmp_path / f".last.pt.lab1-tmp-{_host()}-{dead.pid}", tmp_path / f".best.pt.lab1-tmp{dead.pid}"]
    kept = [tmp_path / f".last.pt.lab1-tmp-other-node-07-{dead.pid}", tmp_path / f".x.lab1-tmp-{_host()}-{os.getpid()}"]
    for f in mine + kept:
        f.write_bytes(b"half")
    remove_stale_tmp(tmp_path)
    assert not any(f.exists() for f in mine) and all(f.exists() for f in kept)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_outside_the_training_loop_is_one_line(sig, code, capsys):
    """Data loading, testing, plotting, between children: the handler stops at once, run_main says so in one
    line with the exit code of the signal."""
    import engine
    from cli import run_main

    def main(argv):
        engine.STOP.handler(sig, None)  # what the operating system's signal does, outside STOP.deferring()
        raise AssertionError("not reached")

    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    err = capsys.readouterr().err
    assert e.value.code == code and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_signal_during_the_last_epochs_checkpoint_is_not_lost(mnist_root, tmp_path, monkeypatch):
    """Asked after the loop's last check (the last validation, the last checkpoint): the run stops right after
    the loop, with the continue line and exit 143, instead of testing and exiting 0 as if nothing was asked."""
    import engine
    import saver

    real = saver.append_jsonl

    def signal_while_saving(path, rec):
        real(path, rec)
        if rec["epoch"] == 2:
            engine.STOP.handler(signal.SIGTERM, None)  # what the operating system's signal does at this moment

    monkeypatch.setattr(saver, "append_jsonl", signal_while_saving)
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "2", *QUIET]
    p = run_cli("exercise1.py", *args)
    assert p.returncode == 143 and "continue with:" in p.stderr.strip().splitlines()[-1], p.stderr
    assert not (tmp_path / "r" / "summary.json").exists()
    monkeypatch.setattr(saver, "append_jsonl", real)
    assert run_cli("exercise1.py", *printed_command(p.stderr)).returncode == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"


def test_standard_loader_with_workers_resumes_exactly(mnist_root, tmp_path, monkeypatch):
    """--loader standard --num_workers 2: killed after epoch 1's checkpoint and resumed, the same as uninterrupted
    (its augmentation depends on (seed, epoch, index) only, not on when the DataLoader workers started)."""
    import saver

    args = [
        "--data_root",
        mnist_root,
        "--epochs",
        "2",
        "--augment",
        "--loader",
        "standard",
        "--num_workers",
        "2",
        "--hidden_size",
        "32",
        *QUIET,
    ]
    assert run_cli("exercise1.py", *args, "--save_dir", tmp_path / "a", "--run_name", "r").returncode == 0
    real = saver.append_jsonl

    def dies_after_epoch_1(path, rec):
        real(path, rec)
        if rec["epoch"] == 1:
            raise SystemExit(9)  # as a kill right after epoch 1's files: the resumed process starts new workers

    monkeypatch.setattr(saver, "append_jsonl", dies_after_epoch_1)
    assert run_cli("exercise1.py", *args, "--save_dir", tmp_path / "b", "--run_name", "r").returncode == 9
    monkeypatch.setattr(saver, "append_jsonl", real)
    assert run_cli("exercise1.py", "--resume", tmp_path / "b" / "r").returncode == 0
    assert metrics(tmp_path / "b" / "r") == metrics(tmp_path / "a" / "r")
