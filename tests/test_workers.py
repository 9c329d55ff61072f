"""Studies shared by several worker processes: each child trained exactly once, a dead worker's child taken
over and resumed, and the same results as one worker (real processes: the process boundary is the point)."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_cli

STUDY = [
    "--study",
    "mlp_depth",
    "--depths",
    "1",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "2",
    "--hidden_size",
    "16",
    "--batch_size",
    "16",
    "--wandb",
    "disabled",
]


def results(study):
    out = {}
    for child in sorted(p for p in study.iterdir() if p.is_dir() and (p / "summary.json").exists()):
        s = json.loads((child / "summary.json").read_text())
        out[child.name] = (
            {k: v for k, v in s.items() if "time" not in k},
            [
                {k: v for k, v in json.loads(line).items() if "time" not in k}
                for line in (child / "metrics.jsonl").read_text().splitlines()
            ],
        )
    return out


def worker(mnist_root, save_dir):
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "exercise1.py"),
            "--data_root",
            str(mnist_root),
            "--save_dir",
            str(save_dir),
            *STUDY,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )


def test_three_workers_and_a_killed_one_give_the_one_worker_results(mnist_root, tmp_path):
    one = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path / "one", *STUDY)
    assert one.returncode == 0, one.stderr
    expected = results(tmp_path / "one" / "mlp_depth")
    assert len(expected) == 4

    procs = [worker(mnist_root, tmp_path / "three") for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    trained = [line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("== ")]
    assert sorted(trained) == sorted(expected), trained  # every child trained exactly once, by one worker
    assert sum(bool([line for line in out.splitlines() if line.startswith("== ")]) for out, _ in outs) >= 2
    assert results(tmp_path / "three" / "mlp_depth") == expected
    assert (tmp_path / "three" / "mlp_depth" / "results.md").exists()

    victim = worker(mnist_root, tmp_path / "killed")
    first = tmp_path / "killed" / "mlp_depth" / "plain1_seed0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (first.exists() and first.read_text()):  # mid-child: its first epoch is saved
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (first.parent / "summary.json").exists()
    again = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path / "killed", *STUDY)
    assert again.returncode == 0, again.stderr
    assert "plain1_seed0: resuming at" in again.stdout
    assert results(tmp_path / "killed" / "mlp_depth") == expected
    report = (tmp_path / "killed" / "mlp_depth" / "summary.json").read_text()
    rerun = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path / "killed", *STUDY)
    assert rerun.returncode == 0 and "finished earlier" in rerun.stdout
    assert (tmp_path / "killed" / "mlp_depth" / "summary.json").read_text() == report  # nothing changes
    spawned = run_cli("exercise1.py", "--resume", tmp_path / "killed" / "mlp_depth", "--workers", "2")
    lines = spawned.stdout.splitlines()  # the study's folder is the last line, printed by the spawner alone
    assert spawned.returncode == 0 and lines[-1] == str(tmp_path / "killed" / "mlp_depth"), spawned.stderr
    assert lines.count(lines[-1]) == 1, lines[-8:]


def test_ctrl_c_to_a_study_with_workers_says_how_to_continue(mnist_root, tmp_path):
    """The spawning process waits for its --workers; a Ctrl-C there stops them and names the study's --resume."""
    main = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "exercise1.py"),
            "--data_root",
            str(mnist_root),
            "--save_dir",
            str(tmp_path),
            *STUDY,
            "--epochs",
            "50",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = tmp_path / "mlp_depth" / "plain1_seed0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (first.exists() and first.read_text()):
        assert main.poll() is None and time.time() < deadline, main.communicate()
        time.sleep(0.02)
    main.send_signal(signal.SIGINT)
    _, err = main.communicate(timeout=120)
    assert main.returncode == 130, err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(f"continue with: python {ROOT / 'exercise1.py'} --resume {tmp_path / 'mlp_depth'}")
    ), err
