"""A kill before any write resumes to the identical result.

Every write of a run (each checkpoint, JSON file, metrics line, figure, published model and the folder's
creation) is numbered; for each k the run is stopped dead just before write k (an exception no code of lab1
catches, like SIGKILL), then continued as a user would (`--resume RUN_DIR`, or the same command when no
folder exists yet), and its results are compared with an uninterrupted run's. In-process, so that the
dozens of kill points take seconds (test_reliability.py kills real processes with SIGKILL).
"""

import json
import os
import sys
from pathlib import Path

import pytest

import figures
import files


class Killed(BaseException):
    """Not an Exception: nothing in lab1 catches it, as nothing survives a SIGKILL."""


@pytest.fixture
def killer(monkeypatch):
    """Counts writes; kills before write number `at` (0 = never)."""
    state = {"n": 0, "at": 0}

    def counted(fn):
        def wrapper(*args, **kwargs):
            state["n"] += 1
            if state["n"] == state["at"]:
                if args and hasattr(args[0], "savefig"):
                    figures.plt.close(args[0])  # the figure never reaches the disk; free it
                raise Killed(f"write {state['n']}")
            return fn(*args, **kwargs)

        return wrapper

    for name in ("atomic_write", "append_jsonl", "publish"):  # in every module that imported it
        real = getattr(files, name)
        for module in [m for m in list(sys.modules.values()) if getattr(m, name, None) is real]:
            monkeypatch.setattr(module, name, counted(real))

    def no_render(fig, path):  # a figure is a write like any other; rendering it would only cost time here
        figures.plt.close(fig)
        Path(path).touch()

    monkeypatch.setattr(figures, "save_figure", counted(no_render))
    monkeypatch.setattr(os, "rename", counted(os.rename))
    return state


def results(folder):
    """What must not change: every summary and every metrics line (less timings) below the folder."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.name == "summary.json":
            out[str(p.relative_to(folder))] = _strip(json.loads(p.read_text()))
        elif p.name == "metrics.jsonl":
            out[str(p.relative_to(folder))] = [_strip(json.loads(line)) for line in p.read_text().splitlines()]
    return out


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if "time" not in k}
    return [_strip(v) for v in obj] if isinstance(obj, list) else obj


def kill_everywhere(main, argv, folder, killer, tmp_path):
    killer.update(n=0, at=0)
    assert main([*argv, "--save_dir", str(tmp_path / "full")]) == 0
    expected, writes = results(tmp_path / "full" / folder), killer["n"]
    assert expected and writes > 10
    for k in range(1, writes + 1):
        save = tmp_path / f"k{k}"
        killer.update(n=0, at=k)
        with pytest.raises(Killed):
            main([*argv, "--save_dir", str(save)])
        killer.update(at=0)
        again = ["--resume", str(save / folder)] if (save / folder).exists() else [*argv, "--save_dir", str(save)]
        assert main(again) == 0, k
        assert results(save / folder) == expected, f"killed before write {k} of {writes}"
        assert not list((save / folder).rglob(".*.tmp*")), k


def test_exercise1_run(mnist_root, tmp_path, killer):
    from exercise1 import main

    argv = [
        "--data_root",
        str(mnist_root),
        "--run_name",
        "r",
        "--epochs",
        "3",
        "--hidden_size",
        "32",
        "--dropout",
        "0.2",
        "--augment",
        "--wandb",
        "disabled",
        "--lr",
        "3e-3",
    ]
    kill_everywhere(main, argv, "r", killer, tmp_path)


def test_study_child(mnist_root, tmp_path, killer):
    from exercise1 import main

    argv = [
        "--data_root",
        str(mnist_root),
        "--study",
        "mlp_depth",
        "--depths",
        "1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--hidden_size",
        "16",
        "--wandb",
        "disabled",
    ]
    kill_everywhere(main, argv, "mlp_depth", killer, tmp_path)


def test_exercise2_phases(mnist_root, tmp_path, killer):
    from exercise2 import main

    argv = [
        "--dataset",
        "mnist",
        "--data_root",
        str(mnist_root),
        "--run_name",
        "kd",
        "--epochs",
        "1",
        "--cache_teacher",
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "32",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--wandb",
        "disabled",
    ]
    kill_everywhere(main, argv, "kd", killer, tmp_path)
