"""--launcher: a study's children as jobs of submitit's local executor (the SLURM one differs in where the jobs
run, not in what they do): each child trained once by its own job, a preempted job requeued and a killed one's
child resumed to the uninterrupted result, diverging children that do not stop the study, kd_grid's students,
--no_wait, a stop while waiting, and the flags that cannot work."""

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
from conftest import ROOT, run_cli
from test_bad_input import assert_one_line_exit_2

TINY = ["--hidden_size", "16", "--batch_size", "16", "--wandb", "disabled"]
SEEDS = ["--seeds", "0", "1", "--epochs", "2", *TINY]
E2 = ["--teacher", "FlexibleMLP", "--student", "FlexibleMLP", "--wandb", "disabled"]


def figures(study):
    """Every child's summary and metrics figures, flat: a job's share of the CPU threads may change the order of
    float sums, so these are compared to 1e-4 (accuracies count examples and agree exactly in practice)."""
    out = {}
    for child in sorted(p for p in study.iterdir() if (p / "metrics.jsonl").exists()):
        s = json.loads((child / "summary.json").read_text())
        out |= {(child.name, k): s[k] for k in ("test_acc", "test_loss", "best_val_acc", "best_epoch", "epochs_run")}
        for rec in map(json.loads, (child / "metrics.jsonl").read_text().splitlines()):
            out |= {(child.name, rec["epoch"], k): v for k, v in rec.items() if k.endswith(("_acc", "_loss"))}
    return out


def same_results(a, b):
    assert figures(a) == pytest.approx(figures(b), rel=1e-4, abs=1e-6)


def job_logs(study):
    return "\n".join(p.read_text() for p in sorted((study / "jobs").glob("*_log.out")))


def trained(study):
    """The children the jobs trained, one entry per `== child` line of their logs."""
    return sorted(line.split()[1] for line in job_logs(study).splitlines() if line.startswith("== "))


def wait_for(what, timeout=240):
    deadline = time.time() + timeout
    while not what():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def submitter(args):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "exercise1.py"), *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )


def test_every_child_is_one_job_trained_once_and_reported(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, *SEEDS, "--run_name", "s"]
    one = run_cli("exercise1.py", *args, "--save_dir", tmp_path / "one")
    p = run_cli("exercise1.py", *args, "--save_dir", tmp_path / "jobs", "--launcher", "local")
    study = tmp_path / "jobs" / "s"
    assert p.returncode == 0 and one.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(study)
    assert re.search(rf"seed0: job \d+, log {re.escape(str(study / 'jobs'))}/\d+_0_log.out", p.stdout), p.stdout
    assert "[2/2 done, 0 running, 0 failed]" in p.stdout
    assert trained(study) == ["seed0", "seed1"]  # each child by exactly one job
    same_results(study, tmp_path / "one" / "s")
    again = run_cli("exercise1.py", "--resume", study, "--launcher", "local")
    assert again.returncode == 0 and again.stdout.count("finished earlier, skipped") == 2, again.stderr
    assert trained(study) == ["seed0", "seed1"]  # nothing submitted again


def test_preempted_job_is_requeued_and_a_killed_ones_child_resumes(mnist_root, tmp_path):
    """seed0's job is preempted (SIGUSR2, as SLURM signals it): it stops its child, which saves a mid-epoch
    last.pt, and is requeued to resume it. seed1's training process is SIGKILLed: its job fails, and the study
    continued with --launcher resumes the child from its last.pt. Both end as if never interrupted."""
    args = ["--data_root", mnist_root, "--seeds", "0", "1", "--epochs", "12", *TINY, "--batch_size", "4"]
    args += ["--run_name", "seeds"]
    assert run_cli("exercise1.py", *args, "--save_dir", tmp_path / "one").returncode == 0
    study = tmp_path / "jobs" / "seeds"
    sub = submitter([*args, "--save_dir", tmp_path / "jobs", "--launcher", "local"])
    for seed in (0, 1):
        metrics = study / f"seed{seed}" / "metrics.jsonl"
        wait_for(lambda m=metrics: m.exists() and m.read_text())  # mid-child: its first epoch is saved
    logs = job_logs(study)
    os.kill(int(re.search(r"job pid (\d+): LAB1_STUDY_CHILD=seed0", logs)[1]), signal.SIGUSR2)
    os.kill(int(re.search(r"== seed1 \(pid (\d+)\)", logs)[1]), signal.SIGKILL)
    out, err = sub.communicate(timeout=300)
    assert sub.returncode == 2, (out, err)
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(f"continue with: python {ROOT / 'exercise1.py'} --resume {study} --launcher local")
    ), err
    assert "seed1 lost: its job ended without it" in out and "seed0 finished" in out
    assert "Requeued job" in (logs := job_logs(study)) and "seed0: resuming at" in logs
    assert not (study / "seed1" / "summary.json").exists()
    again = run_cli("exercise1.py", "--resume", study, "--launcher", "local")
    assert again.returncode == 0, again.stderr
    assert "seed1: resuming at" in job_logs(study)
    assert trained(study).count("seed1") == 2 and "seed1 finished" in again.stdout
    same_results(study, tmp_path / "one" / "seeds")


@pytest.mark.parametrize("how", [[], ["--workers", "2"], ["--launcher", "local"]])
def test_diverging_children_end_and_the_study_goes_on(mnist_root, tmp_path, how):
    """--lr 1e4 makes seed 0 diverge, which used to stop the study; now every child is attempted, each that
    diverged ends with its summary saying so, and the report lists them."""
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "d", *SEEDS, "--lr", "1e4"]
    p = run_cli("exercise1.py", *args, "--optimizer", "sgd", *how)
    assert p.returncode == 0, p.stderr
    study = tmp_path / "d"
    for seed in (0, 1):
        s = json.loads((study / f"seed{seed}" / "summary.json").read_text())
        assert s["status"] == "diverged" and "loss became" in s["error"], s
    report = json.loads((study / "summary.json").read_text())
    assert set(report["failed_children"]) == {"seed0", "seed1"} and report["configurations"] == []
    assert "| seed0 | diverged |" in (study / "results.md").read_text()
    if how:
        return
    again = run_cli("exercise1.py", "--resume", study)  # kept as they are
    assert again.returncode == 0 and again.stdout.count("diverged earlier, skipped (--retry_failed") == 2
    assert "== seed" not in again.stdout
    retry = run_cli("exercise1.py", "--resume", study, "--retry_failed")
    assert retry.returncode == 0 and retry.stdout.count("trained again (--retry_failed)") == 2, retry.stderr
    assert "== seed0" in retry.stdout and "== seed1" in retry.stdout
    assert "--retry_failed trains them again" in retry.stdout  # the report, written again


def test_report_means_are_over_the_finished_children(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "s", *SEEDS]
    assert run_cli("exercise1.py", *args).returncode == 0
    seed0 = json.loads((tmp_path / "s" / "seed0" / "summary.json").read_text())
    (tmp_path / "s" / "seed1" / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "CUDA out of memory", "epochs_run": 1})
    )
    p = run_cli("exercise1.py", "--resume", tmp_path / "s", "--report")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "s" / "summary.json").read_text())
    (row,) = report["configurations"]
    assert row["seeds"] == 1 and row["test_acc_mean"] == seed0["test_acc"]
    assert report["failed_children"] == {"seed1": {"status": "failed", "error": "CUDA out of memory", "epochs_run": 1}}
    assert "| seed1 | failed | 1 | CUDA out of memory |" in (tmp_path / "s" / "results.md").read_text()


def test_a_failed_student_is_left_out_of_the_distillation_report(mnist_root, tmp_path):
    args = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "sd", *E2]
    args += ["--t_hidden_sizes", "16", "--s_hidden_sizes", "8", "--epochs", "1", "--seeds", "0", "1"]
    assert run_cli("exercise2.py", *args).returncode == 0
    lost = tmp_path / "sd" / "student_distill_seed1" / "summary.json"
    lost.write_text(json.dumps({"status": "diverged", "error": "loss became nan in epoch 1", "epochs_run": 0}))
    p = run_cli("exercise2.py", "--resume", tmp_path / "sd")
    assert p.returncode == 0 and "student_distill_seed1: diverged earlier, skipped" in p.stdout, p.stderr
    s = json.loads((tmp_path / "sd" / "summary.json").read_text())
    assert list(s["failed_children"]) == ["student_distill_seed1"] and s["paired"]["seeds"] == 1
    assert s["student_distill"][0]["test_acc_mean"] == s["students"]["student_distill_seed0"]["test_acc"]
    p = run_cli("exercise2.py", "--resume", tmp_path / "sd", "--retry_failed")
    assert p.returncode == 0 and "== student_distill_seed1" in p.stdout, p.stderr
    s = json.loads((tmp_path / "sd" / "summary.json").read_text())
    assert "failed_children" not in s and s["paired"]["seeds"] == 2


def test_kd_grid_students_are_jobs_after_the_teacher(mnist_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        *("--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "grid"),
        *("--teacher", "FlexibleMLP", "--t_hidden_sizes", "16", "--student", "FlexibleMLP", "--s_hidden_sizes", "8"),
        *("--epochs", "1", "--wandb", "disabled", "--cache_teacher", "--study", "kd_grid"),
        *("--temperatures", "2", "8", "--alphas", "0.5", "--seeds", "0", "--launcher", "local"),
    )
    assert p.returncode == 0, p.stderr
    run = tmp_path / "grid"
    assert p.stdout.count("== teacher") == 1 and "== teacher" not in job_logs(run)  # trained here, first
    assert trained(run) == ["student_baseline_seed0", "student_distill_T2_a0.5_seed0", "student_distill_T8_a0.5_seed0"]
    assert job_logs(run).count("teacher logits: reusing") == 3
    rows = json.loads((run / "summary.json").read_text())["student_distill"]
    assert sorted((r["temperature"], r["alpha"]) for r in rows) == [(2.0, 0.5), (8.0, 0.5)]


def test_no_wait_returns_and_the_printed_command_writes_the_report(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, *SEEDS, "--launcher", "local", "--no_wait"
    )
    assert p.returncode == 0, p.stderr
    study = tmp_path / Path(p.stdout.strip().splitlines()[-1]).name
    line = next(x for x in p.stdout.splitlines() if "write the report with: " in x)
    cmd = shlex.split(line.split("write the report with: ")[1])
    assert cmd[:2] == ["python", "exercise1.py"] and cmd[2:] == ["--resume", str(study), "--report"]
    early = run_cli(*cmd[1:])  # the jobs are still starting
    assert_one_line_exit_2(early, "children are not finished yet")
    wait_for(lambda: all((study / f"seed{s}" / "summary.json").exists() for s in (0, 1)))
    late = run_cli(*cmd[1:])
    assert late.returncode == 0 and (study / "results.md").exists(), late.stderr


def test_a_stop_while_waiting_cancels_the_jobs(mnist_root, tmp_path):
    sub = submitter(
        ["--data_root", mnist_root, "--save_dir", tmp_path, "--seeds", "0", "1", "--epochs", "500", *TINY]
        + ["--run_name", "s", "--launcher", "local"]
    )
    study = tmp_path / "s"
    wait_for(lambda: (study / "seed0" / "metrics.jsonl").exists() and (study / "seed0" / "metrics.jsonl").read_text())
    wait_for(lambda: "== seed1" in job_logs(study))
    sub.send_signal(signal.SIGINT)
    _, err = sub.communicate(timeout=120)
    assert sub.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "cancelled the study's jobs" in last and last.endswith(
        f"continue with: python {ROOT / 'exercise1.py'} --resume {study}"
    ), err
    pids = [int(x) for x in re.findall(r"== seed\d \(pid (\d+)\)", job_logs(study))]

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # ended, not reaped yet

    wait_for(lambda: all(map(gone, pids)), timeout=60)  # the trainings stopped with their jobs
    assert not any((study / f"seed{s}" / "summary.json").exists() for s in (0, 1))


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("exercise1.py", [*SEEDS, "--slurm_time", "10"], "--slurm_time sizes SLURM jobs: give it with"),
        ("exercise1.py", [*SEEDS, "--launcher", "local", "--slurm_mem", "8"], "--slurm_mem sizes SLURM jobs"),
        ("exercise1.py", [*SEEDS, "--launcher", "local", "--workers", "2"], "leave out --workers"),
        ("exercise1.py", ["--launcher", "local", *TINY], "give --study, --seeds or --k_folds for several"),
        ("exercise1.py", ["--seeds", "0", "--launcher", "local", *TINY], "give --study, --seeds or --k_folds"),
        ("exercise1.py", [*SEEDS, "--no_wait"], "--no_wait belongs to --launcher"),
        ("exercise1.py", [*SEEDS, "--launcher", "slurm"], "sbatch and srun are not on this machine's PATH"),
        ("exercise1.py", [*SEEDS, "--launcher", "pbs"], "invalid choice: 'pbs'"),
        ("exercise1.py", [*SEEDS, "--launcher", "local", "--slurm_time", "0"], "is not a positive integer"),
        ("exercise2.py", ["--dataset", "mnist", *E2, "--launcher", "local"], "give --seeds or --study kd_grid"),
        ("exercise2.py", ["--task", "finetune", "--launcher", "local"], "--launcher runs the children of a study"),
    ],
)
def test_launcher_flags_that_cannot_work_are_one_line(tmp_path, script, args, message):
    p = run_cli(script, "--data_root", tmp_path / "nodata", "--save_dir", tmp_path / "runs", *args)
    assert_one_line_exit_2(p, message, tmp_path / "runs")


def test_exercise2_under_torchrun_names_the_launcher(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}  # as torchrun sets them, without starting it
    p = run_cli("exercise2.py", "--data_root", tmp_path, "--save_dir", tmp_path / "runs", "--seeds", "0", "1", env=env)
    assert_one_line_exit_2(p, "not under torchrun; for several seeds or a kd_grid use --launcher", tmp_path / "runs")


def test_launcher_flags_are_how_to_run_not_what(mnist_root, tmp_path):
    """A study made with --launcher is the same study as without: its config.json does not record it."""
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, *SEEDS, "--run_name", "s"]
    assert run_cli("exercise1.py", *args, "--launcher", "local", "--no_wait").returncode == 0
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    keys = {k for part in (saved, *saved.values(), *saved["base"].values()) if isinstance(part, dict) for k in part}
    assert not {"launcher", "no_wait", "retry_failed", "slurm_time"} & keys
    wait_for(lambda: all((tmp_path / "s" / f"seed{s}" / "summary.json").exists() for s in (0, 1)))
    p = run_cli("exercise1.py", *args)  # the same command without the launcher continues it: nothing to train
    assert p.returncode == 0 and "continuing" in p.stdout and p.stdout.count("finished earlier, skipped") == 2


def test_slurm_jobs_are_sized_by_the_flags(tmp_path, monkeypatch):
    """The sbatch file submitit would submit (no cluster here: a stand-in srun lets its executor be made)."""
    import launch
    from config import LaunchConfig

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    cfg = LaunchConfig(
        launcher="slurm", slurm_partition="gpu", slurm_time=30, slurm_gpus_per_task=2, slurm_cpus_per_task=4
    )
    ex = launch.executor(cfg, tmp_path / "jobs", "lab1-s")
    text = ex._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("--partition=gpu", "--time=30", "--gpus-per-task=2", "--cpus-per-task=4", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in text, text
    assert "#SBATCH --signal=USR2@90" in text and ex._executor.parameters["array_parallelism"] == 32
