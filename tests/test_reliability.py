"""Divergence and signals, through the CLI."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_cli


def test_nan_loss_stops_with_exit_3(mnist_root, tmp_path):
    p = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "3",
                "--optimizer", "sgd", "--lr", "1e30", "--wandb", "disabled")
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "diverged" in p.stderr and "--lr" in p.stderr and "Traceback" not in p.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "failed"


def test_sigterm_stops_tidily_and_says_how_to_resume(mnist_root, tmp_path):
    run = tmp_path / "r"
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "200",
            "--batch_size", "8", "--wandb", "disabled"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "exercise1.py"), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"--resume {run / 'last.pt'}" in err and "Traceback" not in err


def test_ctrl_c_mid_epoch_saves_at_once_and_resumes_exactly(mnist_root, tmp_path):
    """SIGINT in the middle of an epoch: last.pt holds that very step, and the resumed run ends exactly like
    an uninterrupted one."""
    args = ["--data_root", mnist_root, "--epochs", "3", "--scheduler", "--dropout", "0.2", "--augment",
            "--batch_size", "4", "--hidden_size", "1024", "--wandb", "disabled"]
    full = run_cli("exercise1.py", *args, "--save_dir", tmp_path / "a", "--run_name", "r")
    assert full.returncode == 0, full.stderr
    run = tmp_path / "b" / "r"
    proc = subprocess.Popen([sys.executable, str(ROOT / "exercise1.py"), *map(str, args), "--save_dir",
                             str(tmp_path / "b"), "--run_name", "r"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():  # epoch 1 done: now inside epoch 2
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "step" in err and f"--resume {run / 'last.pt'}" in err
    import torch
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["accum"]["step"] > 0
    resumed = run_cli("exercise1.py", "--resume", run / "last.pt")
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}  # noqa: E731
                       for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(run) == strip(tmp_path / "a" / "r")
    a, b = (json.loads((p / "summary.json").read_text()) for p in (tmp_path / "a" / "r", run))
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])


def test_checkpoint_write_failing_halfway_leaves_the_old_one(tmp_path):
    import pytest
    import torch
    from checkpoint import atomic_write, load_checkpoint, save_checkpoint
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "lab1-checkpoint-v1", "model": {"w": torch.ones(3)}})

    def dies_halfway(tmp):
        with open(tmp, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, dies_halfway)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_sigterm_in_a_study_says_to_rerun_the_command(mnist_root, tmp_path):
    cmd = [sys.executable, str(ROOT / "exercise1.py"), "--study", "mlp_depth", "--depths", "2", "--epochs", "200",
           "--batch_size", "8", "--data_root", str(mnist_root), "--save_dir", str(tmp_path), "--wandb", "disabled"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "mlp_depth" / "plain2_seed0" / "last.pt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again" in err, err
