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
