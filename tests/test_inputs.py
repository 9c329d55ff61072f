"""A run that depends on an input network (finetune's --pretrained, exercise2's --teacher_ckpt) records its sha256
and keeps the network in its folder; a resume reads the kept copy, or the original only while it is unchanged."""

import hashlib
import json
import shutil

import pytest
from conftest import run_cli

QUIET = ["--wandb", "disabled"]


@pytest.fixture(scope="module")
def cnns(cifar_root, tmp_path_factory):
    """Two CNNs of one architecture (seeds 0 and 1): the second stands in for a file replaced by another."""
    out = tmp_path_factory.mktemp("cnns")
    for seed in ("0", "1"):
        p = run_cli(
            "exercise1.py",
            *["--model", "FlexibleCNN", "--layers", "1", "1", "--width", "8", "--residual", "--norm"],
            *["--dataset", "cifar10", "--data_root", cifar_root, "--save_dir", out, "--run_name", f"s{seed}"],
            *["--epochs", "1", "--seed", seed, *QUIET],
        )
        assert p.returncode == 0, p.stderr
    return out / "s0" / "best.pt", out / "s1" / "best.pt"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finetune(cnn, mnist_root, save, name):
    argv = ["--task", "finetune", "--pretrained", cnn, "--dataset", "mnist", "--data_root", mnist_root]
    return run_cli(
        "exercise2.py", *argv, "--save_dir", save, "--run_name", name, "--mode", "finetune", "--epochs", "1", *QUIET
    )


def _as_if_stopped_before_the_first_checkpoint(run):
    shutil.rmtree(run / "finetune")
    for f in ("summary.json", "results.md", "comparison.png"):
        (run / f).unlink()


def _metrics(run):
    return [{k: v for k, v in json.loads(x).items() if "time" not in k} for x in run.read_text().splitlines()]


def test_finetune_resume_reads_its_kept_copy_when_the_file_was_replaced(cnns, mnist_root, tmp_path):
    given = tmp_path / "given.pt"
    shutil.copyfile(cnns[0], given)
    assert _finetune(given, mnist_root, tmp_path, "a").returncode == 0
    assert _finetune(given, mnist_root, tmp_path, "b").returncode == 0
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["transfer"]["pretrained_sha256"] == _sha(given) and (tmp_path / "b" / "pretrained.pt").is_file()
    _as_if_stopped_before_the_first_checkpoint(tmp_path / "b")
    shutil.copyfile(cnns[1], given)  # another network of the same architecture
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert str(tmp_path / "b" / "pretrained.pt") in p.stdout
    a, b = (_metrics(tmp_path / r / "finetune" / "metrics.jsonl") for r in "ab")
    assert a == b


def test_finetune_resume_without_a_copy_refuses_a_changed_file(cnns, mnist_root, tmp_path):
    given = tmp_path / "given.pt"
    shutil.copyfile(cnns[0], given)
    assert _finetune(given, mnist_root, tmp_path, "b").returncode == 0
    _as_if_stopped_before_the_first_checkpoint(tmp_path / "b")
    (tmp_path / "b" / "pretrained.pt").unlink()  # stopped before the copy was written, too
    shutil.copyfile(cnns[1], given)
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert "--pretrained" in p.stderr and "sha256" in p.stderr and "restore" in p.stderr
    assert not (tmp_path / "b" / "finetune").exists()
    shutil.copyfile(cnns[0], given)  # the file restored: the resume reads it
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 0, p.stderr


KD = ["--dataset", "mnist", "--student", "FlexibleMLP", "--s_hidden_sizes", "8", "--epochs", "1", *QUIET]


def _teachers(mnist_root, tmp_path):
    """Two MLP teachers of one architecture, as exercise2 publishes them (teacher.pth)."""
    out = []
    for seed in ("0", "1"):
        argv = [*KD, "--data_root", mnist_root, "--teacher", "FlexibleMLP", "--t_hidden_sizes", "16", "--seed", seed]
        assert run_cli("exercise2.py", *argv, "--save_dir", tmp_path, "--run_name", f"t{seed}").returncode == 0
        out.append(tmp_path / f"t{seed}" / "teacher.pth")
    return out


def test_exercise2_resume_uses_teacher_pth_in_every_case(mnist_root, tmp_path):
    teachers, given = _teachers(mnist_root, tmp_path), tmp_path / "given.pth"
    shutil.copyfile(teachers[0], given)
    argv = [*KD, "--data_root", mnist_root, "--teacher_ckpt", given, "--save_dir", tmp_path]
    assert run_cli("exercise2.py", *argv, "--run_name", "a").returncode == 0
    assert run_cli("exercise2.py", *argv, "--run_name", "b").returncode == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["distill"]["teacher_sha256"] == _sha(given)
    for phase in ("student_baseline", "student_distill"):  # as if stopped before the students' first checkpoint
        shutil.rmtree(tmp_path / "b" / phase)
    (tmp_path / "b" / "summary.json").unlink()
    shutil.copyfile(teachers[1], given)  # replaced: the run's teacher.pth is read
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert str(tmp_path / "b" / "teacher.pth") in p.stdout
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert a["student_distill"]["test_acc"] == b["student_distill"]["test_acc"]
    assert a["teacher"]["test_acc"] == b["teacher"]["test_acc"]
    (tmp_path / "b" / "teacher.pth").unlink()  # stopped before teacher.pth was written: the changed file is refused
    (tmp_path / "b" / "summary.json").unlink()
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 2 and "--teacher_ckpt" in p.stderr and len(p.stderr.strip().splitlines()) == 1
