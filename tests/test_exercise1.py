"""exercise1.py through its real command line, on tiny data sets in the real on-disk formats."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATA, run_cli

QUIET = ["--wandb", "disabled"]


def last_line(proc):
    return Path(proc.stdout.strip().splitlines()[-1])


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mlp_run_leaves_every_file(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "2",
        "--depth",
        "3",
        "--residual",
        "--norm",
        "--scheduler",
        "--batch_size",
        "32",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    run = last_line(p)
    assert run.parent == tmp_path
    for name in (
        "config.json",
        "command.txt",
        "metrics.jsonl",
        "best.pt",
        "last.pt",
        "summary.json",
        "curves.png",
        "grads.png",
    ):
        assert (run / name).stat().st_size > 0, name
    assert "parameters" in p.stdout and "epoch   2/2" in p.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["depth"] == 3 and cfg["model"]["residual"] and cfg["model"]["norm"] == "batch"
    assert cfg["train"]["scheduler"] == "cosine" and cfg["data"]["dataset"] == "mnist"
    command_line, code, end = (run / "command.txt").read_text().splitlines()
    assert re.fullmatch(r"# ended \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: exit code 0, wall time \d+\.\d s", end), end
    assert "--depth 3" in command_line
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the suite runs from a git work tree in CI; a copy without .git says so instead
        assert code.startswith(f"# code: git commit {head.stdout.strip()}")
    else:
        assert code == "# code: not in a git work tree"
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "lr",
            "epoch_time_s",
            "grad_norm",
            "grad_median_first",
            "grad_median_last",
        } <= set(m)
        assert 0 <= m["val_acc"] <= 1 and m["train_loss"] > 0
        assert set(m["grad_norm"]) == {"blocks.0.fc", "blocks.1.fc", "blocks.2.fc", "proj.1_0", "head"}
        assert all(v > 0 for v in m["grad_norm"].values())
    s = json.loads((run / "summary.json").read_text())
    assert {"test_acc", "test_loss", "best_val_acc", "best_epoch", "params", "train_time_s", "epochs_run"} <= set(s)
    assert s["epochs_run"] == 2 and s["test_acc"] > 0.3  # learnable synthetic data: well above 10% chance
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "scheduler", "scaler", "epoch", "rng", "config"} <= set(ckpt)
    assert "optimizer" not in ckpt  # a finished run keeps its optimizer's state only with --keep_optimizer


def test_cnn_run(cifar_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--model",
        "FlexibleCNN",
        "--layers",
        "1",
        "1",
        "--width",
        "4",
        "--residual",
        "--norm",
        "--dataset",
        "cifar10",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "1",
        "--run_name",
        "cnn",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    run = last_line(p)
    assert run == tmp_path / "cnn" and (run / "grads.png").exists()
    assert json.loads((run / "config.json").read_text())["data"]["augment"] is True  # colour data: on by default


def test_preset_on_image_folder(folder_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--model",
        "resnet20",
        "--dataset",
        "folder",
        "--data_root",
        folder_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((last_line(p) / "summary.json").read_text())["params"] == 269_722 - 650 + 195  # 3 classes


def test_early_stopping_stops_and_restores_best(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "20",
        "--lr",
        "1e-12",
        "--early_stopping",
        "2",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((last_line(p) / "summary.json").read_text())
    assert s["epochs_run"] == 3 and s["best_epoch"] == 1 and "early stopping" in p.stdout
    (last_line(p) / "summary.json").unlink()  # as if stopped during the final test: the resume stops again at once
    again = run_cli("exercise1.py", "--resume", last_line(p))
    assert again.returncode == 0, again.stderr
    assert json.loads((last_line(p) / "summary.json").read_text()) == {
        **s,
        "train_time_s": pytest.approx(s["train_time_s"]),
    }


def test_k_fold_prints_k_results(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--epochs", "1", "--k_folds", "3", *QUIET
    )
    assert p.returncode == 0, p.stderr
    assert sum(": best val acc" in line for line in p.stdout.splitlines()) == 3
    assert "3-fold cross-validation: val acc" in p.stdout and "±" in p.stdout
    s = json.loads((last_line(p) / "summary.json").read_text())
    assert len(s["fold_val_acc"]) == 3 and abs(s["val_acc_mean"] - sum(s["fold_val_acc"]) / 3) < 1e-9


def _comparable(metrics):
    return [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in metrics]


def test_resume_after_sigkill_matches_uninterrupted(mnist_root, tmp_path):
    """A run killed with SIGKILL mid-training and resumed ends with exactly the uninterrupted metrics."""
    args = [
        "--data_root",
        mnist_root,
        "--epochs",
        "3",
        "--scheduler",
        "--dropout",
        "0.2",
        "--augment",
        "--batch_size",
        "16",
        "--hidden_size",
        "256",
        *QUIET,
    ]
    full = run_cli("exercise1.py", *args, "--save_dir", tmp_path / "a", "--run_name", "r")
    assert full.returncode == 0, full.stderr
    run = tmp_path / "b" / "r"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "exercise1.py"),
            *map(str, args),
            "--save_dir",
            str(tmp_path / "b"),
            "--run_name",
            "r",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and not (run / "metrics.jsonl").exists()
        or len((run / "metrics.jsonl").read_text().splitlines()) < 1
    ):
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(run)) < 4
    resumed = run_cli("exercise1.py", "--resume", run / "last.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert _comparable(read_metrics(run)) == _comparable(read_metrics(tmp_path / "a" / "r"))
    a = json.loads((tmp_path / "a" / "r" / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])


@pytest.mark.parametrize("scheduler", ["none", "cosine"])
def test_resume_may_extend_epochs(mnist_root, tmp_path, scheduler):
    """A schedule is stretched to the new length, and says so: the added epoch learns (cosine had reached 0)."""
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--epochs",
        "2",
        "--scheduler",
        scheduler,
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    p = run_cli("exercise1.py", "--resume", tmp_path / "r" / "last.pt", "--epochs", "3")
    assert p.returncode == 0, p.stderr
    assert ("schedule now spans 3 epochs instead of 2" in p.stdout) == (scheduler == "cosine")
    lrs = [m["lr"] for m in read_metrics(tmp_path / "r")]
    assert lrs == ([1e-3] * 3 if scheduler == "none" else pytest.approx([1e-3, 0.5e-3, 0.25e-3]))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["epochs"] == 3
    lines = (tmp_path / "r" / "command.txt").read_text().splitlines()  # the run, then the resume: code, end each
    assert len(lines) == 6 and lines[3].startswith("# resumed: ") and "--epochs 3" in lines[3]
    assert lines[1].startswith("# code: ") and lines[4].startswith("# code: ")
    assert lines[2].startswith("# ended ") and lines[5].startswith("# ended ") and "exit code 0" in lines[5]


def test_wandb_offline_holds_the_logged_metrics_summary_and_figures(mnist_root, tmp_path):
    from wandb_reader import read_offline_run

    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path / "runs",
        "--epochs",
        "2",
        "--wandb",
        "offline",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    run = last_line(p)
    assert f"wandb sync runs/{run.name}/wandb" in p.stdout  # offline files live in the run folder
    w = read_offline_run(next((run / "wandb").glob("offline-run-*")))
    metrics = read_metrics(run)
    assert {"train/loss", "val/acc", "lr", "grad/head"} <= set(w["history_keys"])
    assert [h["val/acc"] for h in w["history"] if "val/acc" in h] == [m["val_acc"] for m in metrics]
    s = json.loads((run / "summary.json").read_text())
    assert w["summary"]["test/acc"] == s["test_acc"] and w["summary"]["best_epoch"] == s["best_epoch"]
    assert {"curves", "grads", "confusion"} <= set(w["summary"])  # the figures


def test_wandb_unreachable_never_stops_training(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "1",
        "--wandb",
        "online",
        cwd=tmp_path,
        env={"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "5"},
        timeout=200,
    )
    assert p.returncode == 0, p.stderr
    assert "warning: W&B" in p.stderr and (last_line(p) / "summary.json").exists()


BAD = [
    (["--depth", "0"], "--depth"),
    (["--layers", "2", "-1"], "--layers"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--val_split", "1.5"], "--val_split"),
    (["--model", "resnet9000"], "--model"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--batch_size", "0"], "--batch_size"),
    (["--dropout", "1.5"], "--dropout"),
    (["--skips", "1:2"], "--skips"),
    (["--depth", "2", "--skips", "3:0"], "skip 3:0"),
    (["--norm", "group"], "--norm"),
    (["--model", "resnet20", "--norm", "layer"], "norm layer"),
    (["--k_folds", "1"], "--k_folds"),
    (["--early_stopping", "2", "--val_split", "0"], "--early_stopping"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16"),
    (["--run_name", "a/b"], "--run_name"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_exit_2(mnist_root, tmp_path, extra, message):
    p = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path / "runs", "--epochs", "1", *QUIET, *extra
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert message in p.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_of_missing_corrupt_or_foreign_checkpoint(mnist_root, tmp_path):
    p = run_cli("exercise1.py", "--resume", tmp_path / "nonexistent" / "last.pt")
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.splitlines()) == 1
    p = run_cli("exercise1.py", "--resume", tmp_path)
    assert p.returncode == 2 and "no lab1 run folder" in p.stderr
    ok = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--epochs", "1", *QUIET
    )
    assert ok.returncode == 0, ok.stderr
    p = run_cli("exercise1.py", "--resume", tmp_path / "r" / "best.pt")
    assert p.returncode == 2 and "holds weights only" in p.stderr
    last = tmp_path / "r" / "last.pt"
    good = last.read_bytes()
    for damage, message in ((good[: len(good) // 2], "corrupt"), (b"not a checkpoint", "corrupt or not a checkpoint")):
        last.write_bytes(damage)
        p = run_cli("exercise1.py", "--resume", tmp_path / "r")
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    torch.save({"weights": 1}, last)
    p = run_cli("exercise1.py", "--resume", last)
    assert p.returncode == 2 and "not a lab1 checkpoint" in p.stderr
    p = run_cli("exercise1.py", "--resume", last, "--model", "resnet20")
    assert p.returncode == 2 and "only --epochs" in p.stderr


def test_existing_run_folder_is_not_overwritten(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "same", "--epochs", "1", *QUIET]
    assert run_cli("exercise1.py", *args).returncode == 0
    p = run_cli("exercise1.py", *args)
    assert p.returncode == 2 and "already exists" in p.stderr
    assert run_cli("exercise1.py", *args, "--overwrite").returncode == 0


def test_missing_data_is_one_clear_line(tmp_path):
    p = run_cli("exercise1.py", "--data_root", tmp_path / "empty", "--save_dir", tmp_path / "runs", *QUIET, timeout=200)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "train-images-idx3-ubyte.gz" in p.stderr and "--data_root" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_help_documents_every_flag():
    p = run_cli("exercise1.py", "--help")
    assert p.returncode == 0
    for group in ("Model:", "Data:", "Optimisation:", "Output:"):
        assert group in p.stdout
    for flag in (
        "--model",
        "--hidden_size",
        "--depth",
        "--hidden_sizes",
        "--skips",
        "--residual",
        "--norm",
        "--layers",
        "--block",
        "--width",
        "--dropout",
        "--activation",
        "--optimizer",
        "--weight_decay",
        "--scheduler",
        "--warmup_epochs",
        "--label_smoothing",
        "--augment",
        "--no_augment",
        "--val_split",
        "--subset",
        "--early_stopping",
        "--k_folds",
        "--seed",
        "--device",
        "--amp",
        "--save_dir",
        "--run_name",
        "--resume",
        "--wandb",
        "--wandb_project",
    ):
        assert flag in p.stdout, flag


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").exists(), reason="../shared/data not present")
def test_real_mnist_one_epoch_reaches_95(tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        SHARED_DATA,
        "--save_dir",
        tmp_path,
        "--epochs",
        "1",
        "--norm",
        "--subset",
        "30000",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    assert read_metrics(last_line(p))[0]["val_acc"] >= 0.95


@pytest.mark.parametrize("script", ["exercise1", "exercise2"])
def test_help_gives_every_flag_a_default_and_no_machine_facts(script):
    import importlib

    parser = importlib.import_module(script).get_args_parser()
    text = parser.format_help()
    for action in parser._actions:  # a test may look inside argparse; the code does not
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), action.option_strings
    for fact in ("this project's machine", "AVX512", "EPYC", "2-core", "../shared"):
        assert fact not in text, fact
    assert "confusion.png" in text or script == "exercise2"
