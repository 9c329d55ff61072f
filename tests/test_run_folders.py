"""--overwrite replaces only folders lab1 made: those create_run_dir marked (.lab1-run), and older lab1 run folders
that hold lab1's command.txt and a lab1 run's config.json; anything else is refused in one line, untouched."""

import json

import pytest
from conftest import run_cli

QUIET = ["--wandb", "disabled", "--epochs", "1", "--hidden_size", "8", "--depth", "1"]


def new_run(mnist_root, save, name="r", *extra):
    return run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", save, "--run_name", name, *QUIET, *extra)


def test_a_run_folder_is_marked_and_may_be_overwritten(mnist_root, tmp_path):
    assert new_run(mnist_root, tmp_path).returncode == 0
    assert (tmp_path / "r" / ".lab1-run").is_file()
    (tmp_path / "r" / "notes.txt").write_text("old")
    p = new_run(mnist_root, tmp_path, "r", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "r" / "notes.txt").exists() and (tmp_path / "r" / ".lab1-run").is_file()


def _refused(mnist_root, save, name):
    before = {p.name: p.read_bytes() for p in (save / name).iterdir()}
    p = new_run(mnist_root, save, name, "--overwrite")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "not a lab1 run folder" in p.stderr and "Traceback" not in p.stderr
    assert {p.name: p.read_bytes() for p in (save / name).iterdir()} == before
    return p.stderr


def test_another_tools_folder_with_config_and_weights_is_refused(mnist_root, tmp_path):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (other / "pytorch_model.bin").write_bytes(b"weights")
    (other / "command.txt").write_text("train.py\n")
    assert "not a lab1 run's" in _refused(mnist_root, tmp_path, "bert")


def test_a_copied_lab1_config_alone_does_not_make_a_folder_lab1s(mnist_root, tmp_path):
    assert new_run(mnist_root, tmp_path).returncode == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "config.json").write_text((tmp_path / "r" / "config.json").read_text())
    (other / "thesis.tex").write_text("mine")
    assert "command.txt" in _refused(mnist_root, tmp_path, "mine")


@pytest.mark.parametrize("drop_kind", [False, True])
def test_a_run_folder_made_before_the_mark_is_still_recognised(mnist_root, tmp_path, drop_kind):
    assert new_run(mnist_root, tmp_path).returncode == 0
    (tmp_path / "r" / ".lab1-run").unlink()  # as lab1 left run folders before the mark
    if drop_kind:  # and before config.json recorded its kind
        config = json.loads((tmp_path / "r" / "config.json").read_text())
        del config["kind"]
        (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    p = new_run(mnist_root, tmp_path, "r", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / ".lab1-run").is_file()
