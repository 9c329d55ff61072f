"""The bench scripts run and print what the README shows (their timings are not tested: see bench/)."""

import sys

from conftest import ROOT, run_cli

# run_cli runs a script in this process, importing it by its file stem: bench/ must be importable (its names,
# common and the scripts', clash with no project module).
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))


def table_rows(out):
    return [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| Epoch")]


def test_time_to_accuracy_stops_at_the_target_and_prints_its_table(mnist_root):
    r = run_cli("bench/time_to_accuracy.py", "--data_root", mnist_root, "--target", "0.0", "--epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "reached 0.0% test accuracy after 1 epochs" in r.stdout and len(table_rows(r.stdout)) == 1
    assert "peak RSS" in r.stdout


def test_time_to_accuracy_says_when_the_budget_ran_out(mnist_root):
    r = run_cli("bench/time_to_accuracy.py", "--data_root", mnist_root, "--target", "1.01", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "did not reach 101.0% in 2 epochs" in r.stdout and "best test acc" in r.stdout
    assert [row.split("|")[1].strip() for row in table_rows(r.stdout)] == ["1", "2"]


def test_step_logging_compares_epochs_with_and_without_step_points(mnist_root, tmp_path):
    r = run_cli(
        "bench/step_logging.py", "--data_root", mnist_root, "--repeats", "1", "--batch_size", "8", "--log_every", "5",
        env={"WANDB_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    points = [int(row.split("|")[4]) for row in table_rows(r.stdout)]  # 38 steps of 8 per epoch
    assert points[0] == 0 and 1 <= points[1] < 8 and points[2] == 8  # as training logs them; every 5 steps
