"""torchrun with 2 CPU processes (gloo) against 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def torchrun(n, mnist_root, save_dir):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(n),
            "--master_port",
            str(29500 + n + os.getpid() % 1000),
            str(ROOT / "exercise1.py"),
            "--data_root",
            str(mnist_root),
            "--epochs",
            "3",
            "--batch_size",
            "30",
            "--scheduler",
            "--save_dir",
            str(save_dir),
            "--run_name",
            f"n{n}",
            "--wandb",
            "disabled",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_two_processes_match_one(mnist_root, tmp_path):
    runs = {}
    for n in (1, 2):
        p = torchrun(n, mnist_root, tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count(str(tmp_path / f"n{n}")) == 1  # only rank 0 prints
        runs[n] = [json.loads(line) for line in (tmp_path / f"n{n}" / "metrics.jsonl").read_text().splitlines()]
    assert len(runs[1]) == len(runs[2]) == 3
    for a, b in zip(runs[1], runs[2]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    one, two = (json.loads((tmp_path / f"n{n}" / "summary.json").read_text()) for n in (1, 2))
    assert two["test_acc"] == pytest.approx(one["test_acc"], abs=1e-6)
