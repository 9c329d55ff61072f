"""exercise1.py --evaluate PATH: a saved model tested on a data set's test split, nothing written into its folder;
a wrong path or data it cannot take is one line, exit 2."""

import json

import pytest
from conftest import run_cli, write_cifar

QUIET = ["--wandb", "disabled", "--epochs", "1", "--hidden_size", "16", "--depth", "1"]


@pytest.fixture(scope="module")
def trained(mnist_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("eval")
    p = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", save, "--run_name", "r", *QUIET)
    assert p.returncode == 0, p.stderr
    return save / "r"


def _state(folder):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_evaluates_as_the_run_tested_and_writes_nothing(trained, mnist_root):
    before = _state(trained)
    p = run_cli("exercise1.py", "--evaluate", trained)  # data set and root from the run's own folder
    assert p.returncode == 0, p.stderr
    summary = json.loads((trained / "summary.json").read_text())
    assert f"acc {summary['test_acc']:.4f}" in p.stdout and "test (100 examples)" in p.stdout
    assert "per-class accuracy:" in p.stdout and sum(" of " in line for line in p.stdout.splitlines()) == 10
    assert _state(trained) == before
    p = run_cli("exercise1.py", "--evaluate", trained / "last.pt", "--data_root", mnist_root, "--test_subset", "50")
    assert p.returncode == 0 and "test (50 examples, --test_subset)" in p.stdout, p.stderr
    assert _state(trained) == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["{run}/nowhere.pt"], "does not exist"),
        (["{run}/.."], "no best.pt"),
        (["{run}/config.json"], "not a checkpoint"),
        (["{run}", "--dataset", "cifar10", "--data_root", "{cifar}"], "takes 1x28x28 images of 10 classes"),
        (["{run}", "--lr", "0.1"], "--evaluate takes only"),
        (["{run}", "--test_subset", "500"], "--test_subset 500 is larger"),
    ],
)
def test_bad_paths_and_data_it_cannot_take_are_one_line(trained, cifar_root, extra, message):
    before = _state(trained.parent)
    argv = [a.format(run=trained, cifar=cifar_root) for a in extra]
    p = run_cli("exercise1.py", "--evaluate", *argv)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert _state(trained.parent) == before


def test_a_class_count_it_cannot_take(tmp_path, cifar_root):
    p = run_cli(
        "exercise1.py",
        "--dataset",
        "cifar10",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "c",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    other = write_cifar(tmp_path / "c100", classes=5)
    p = run_cli("exercise1.py", "--evaluate", tmp_path / "c", "--dataset", "cifar100", "--data_root", other)
    assert p.returncode == 2 and "of 10 classes" in p.stderr and "of 5" in p.stderr, p.stderr
