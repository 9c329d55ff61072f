"""What each command puts into W&B, read back from its offline .wandb files (wandb's own record format): a single
run, a study and a k-fold run with their summary runs, exercise2's --study kd_grid with a logged teacher's
lineage, and a transfer run; the flat config against the flags, the project and group names, and the one
`wandb sync` command for offline runs."""

import base64
import hashlib
import json
import math
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
from conftest import run_cli, write_folder  # noqa: E402
from wandb_reader import read_offline_run, table  # noqa: E402

from tracking import data_name, flat_config, group_of  # noqa: E402
from wandb_log import sync_command  # noqa: E402

MLP = ["--hidden_size", "8", "--batch_size", "32", "--wandb", "offline"]


def wandb_env(tmp_path, **extra):
    """wandb's data and cache (artifact staging) under tmp_path."""
    return {"WANDB_DATA_DIR": str(tmp_path / "wandb_data"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), **extra}


def runs_in(folder):
    return [read_offline_run(r) for r in sorted(Path(folder).rglob("offline-run-*"))]


def md5(path):
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


def numbers(rows, columns, names):
    """The values of `names` columns are numbers (or None), not formatted strings."""
    idx = [columns.index(n) for n in names]
    return all(r[i] is None or isinstance(r[i], (int, float)) for r in rows for i in idx)


def test_single_run(mnist_root, tmp_path):
    """Flat config with the flags' names, the best epoch's metrics as summary, test/acc, per-step loss and
    learning rate on a step axis, epochs on an epoch axis, WANDB_PROJECT honoured, the best model as artifact."""
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--epochs",
        "4",
        "--lr",
        "0.03",
        *MLP,
        "--wandb_log_model",
        "best",
        cwd=tmp_path,
        env=wandb_env(tmp_path, WANDB_PROJECT="from_env"),
    )
    assert p.returncode == 0, p.stderr
    run = tmp_path / "r"
    (w,) = runs_in(run)
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert w["project"] == "from_env" == json.loads((run / "config.json").read_text())["output"]["wandb_project"]
    c = w["config"]
    assert not [k for k, v in c.items() if isinstance(v, dict)]  # flat: no section a sweep parameter could replace
    assert (c["kind"], c["model"], c["hidden_size"], c["norm"], c["activation"], c["epochs"]) == (
        "exercise1",
        "FlexibleMLP",
        8,
        "none",
        "relu",
        4,
    )
    s, best = w["summary"], metrics[summary["best_epoch"] - 1]
    assert (s["val/acc"], s["val/loss"], s["train/loss"]) == (best["val_acc"], best["val_loss"], best["train_loss"])
    assert s["best_epoch"] == summary["best_epoch"] and s["epoch"] == 4
    assert (s["test/acc"], s["test/loss"]) == (summary["test_acc"], summary["test_loss"]) and "test_acc" not in s
    steps = math.ceil(270 / 32)  # 270 training examples: one point at each epoch's last step (log_every is 25)
    assert [r["global_step"] for r in w["history"] if "batch/loss" in r] == [steps * e for e in (1, 2, 3, 4)]
    assert all("batch/lr" in r for r in w["history"] if "batch/loss" in r)
    assert [r["epoch"] for r in w["history"] if "val/acc" in r] == [1, 2, 3, 4]
    assert w["metrics"]["batch/*"]["step_metric"] == "global_step" and w["metrics"]["val/*"]["step_metric"] == "epoch"
    (art,) = w["artifacts"]
    assert (art["name"], art["type"], art["aliases"]) == (f"train-{w['id']}", "model", ["best", "latest"])
    assert art["files"] == {"best.pt": md5(run / "best.pt")} and art["metadata"]["test_acc"] == summary["test_acc"]


def test_explicit_project_flag_wins_and_wandb_dir_is_honoured(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--epochs",
        "1",
        *MLP,
        "--wandb_project",
        "from_flag",
        cwd=tmp_path,
        env=wandb_env(tmp_path, WANDB_PROJECT="from_env", WANDB_DIR=str(tmp_path / "wd")),
    )
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "r" / "wandb").exists()
    (w,) = runs_in(tmp_path / "wd")
    assert w["project"] == "from_flag" and "wandb sync wd/wandb" in p.stdout


def test_study_children_and_summary_run_share_a_unique_group(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--epochs", "1", *MLP]
    p = run_cli("exercise1.py", *args, "--study", "mlp_depth", "--depths", "1", "2", "--seeds", "0", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    study = tmp_path / "mlp_depth"
    report = json.loads((study / "summary.json").read_text())
    runs = {w["name"]: w for w in runs_in(study)}
    assert len(runs) == 9 and {w["group"] for w in runs.values()} == {group_of(study)}
    assert group_of(study) != group_of(tmp_path / "elsewhere" / "mlp_depth")  # two studies of one name never merge
    child = runs["residual2_seed1"]
    assert child["job_type"] == "residual"
    assert {k: child["config"][k] for k in ("study", "depth", "residual", "seed", "seeds", "model")} == {
        "study": "mlp_depth",
        "depth": 2,
        "residual": True,
        "seed": 1,
        "seeds": [0, 1],
        "model": "FlexibleMLP",
    }
    w = runs["mlp_depth-summary"]
    assert w["job_type"] == "summary" and w["config"]["kind"] == "study" and w["config"]["depths"] == [1, 2]
    t = table(w, "results")
    assert numbers(t["data"], t["columns"], t["columns"][1:]) and len(t["data"]) == 4
    assert [r[t["columns"].index("test_acc_mean")] for r in t["data"]] == [
        r["test_acc_mean"] for r in report["configurations"]
    ]
    t = table(w, "residual_minus_plain")
    assert t["columns"] == ["depth", "paired_mean", "paired_std", "paired_ci95_low", "paired_ci95_high"]
    assert t["data"][0] == [1, *(report["residual_minus_plain"]["1"][k] for k in ("mean", "std")), *report[
        "residual_minus_plain"
    ]["1"]["ci95"]]  # fmt: skip
    assert w["summary"]["residual_minus_plain/2/mean"] == report["residual_minus_plain"]["2"]["mean"]
    assert w["summary"]["residual1/test/acc_mean"] == report["configurations"][2]["test_acc_mean"]
    assert len(table(w, "children")["data"]) == 8
    assert {"comparison", "grads"} <= set(w["summary"])


def test_seeds_study_summary_run(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "s", "--epochs", "1", *MLP]
    p = run_cli("exercise1.py", *args, "--seeds", "0", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    runs = {w["job_type"]: w for w in runs_in(tmp_path / "s")}
    assert set(runs) == {"FlexibleMLP", "summary"}
    t = table(runs["summary"], "results")
    row = dict(zip(t["columns"], t["data"][0]))
    assert (row["model"], row["depth"], row["seeds"]) == ("FlexibleMLP", 4, 2) and row["test_acc_std"] >= 0
    assert "residual_minus_plain" not in runs["summary"]["summary"]  # no pairs to compare: no table


def test_a_summary_run_that_cannot_read_its_report_only_warns(tmp_path, capsys):
    from wandb_reports import study_to_wandb

    assert study_to_wandb("best plain 2", tmp_path, []) == "best plain 2"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: W&B summary run not logged")


def test_k_fold_summary_run(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "kf", "--epochs", "1", *MLP]
    p = run_cli("exercise1.py", *args, "--k_folds", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "kf" / "summary.json").read_text())
    runs = {w["job_type"]: w for w in runs_in(tmp_path / "kf")}
    assert set(runs) == {"fold", "summary"}
    s = runs["summary"]["summary"]
    assert (s["val/acc_mean"], s["val/acc_std"]) == (report["val_acc_mean"], report["val_acc_std"])
    t = table(runs["summary"], "children")
    assert [r[t["columns"].index("fold")] for r in t["data"]] == [1, 2]
    assert [r[t["columns"].index("best_val_acc")] for r in t["data"]] == report["fold_val_acc"]


def test_kd_grid_phases_summary_run_and_teacher_lineage(mnist_root, tmp_path):
    """Each student is a run carrying the distillation settings (its T and alpha) and, the teacher having been
    logged with --wandb_log_model, the teacher's artifact; the summary run holds the grid as numbers."""
    env = wandb_env(tmp_path)
    common = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--epochs", "1"]
    p = run_cli("exercise1.py", *common, "--run_name", "t", *MLP, "--wandb_log_model", "best", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    (teacher,) = runs_in(tmp_path / "t")
    grid = ["--study", "kd_grid", "--temperatures", "2", "4", "--alphas", "0.5", "--seeds", "0", "1"]
    student = ["--student", "FlexibleMLP", "--s_hidden_sizes", "8", "--teacher_ckpt", tmp_path / "t" / "best.pt"]
    p = run_cli(
        "exercise2.py", *common, "--run_name", "kd", *student, *grid, "--wandb", "offline", cwd=tmp_path, env=env
    )
    assert p.returncode == 0, p.stderr
    runs = {w["name"]: w for w in runs_in(tmp_path / "kd")}
    assert len(runs) == 7 and {w["group"] for w in runs.values()} == {group_of(tmp_path / "kd")}
    c = runs["kd-student_distill_T4_a0.5_seed1"]["config"]
    assert (c["kind"], c["phase"], c["temperature"], c["alpha"], c["seed"], c["study"]) == (
        "exercise2",
        "student_distill",
        4.0,
        0.5,
        1,
        "kd_grid",
    )
    assert (c["teacher"], c["t_hidden_size"], c["teacher_ckpt"]) == ("FlexibleMLP", 8, str(tmp_path / "t" / "best.pt"))
    assert c["teacher_artifact"] == f"Lab1_DLA_MLP/train-{teacher['id']}:best"
    assert "teacher_artifact" not in runs["kd-student_baseline_seed0"]["config"]
    w = runs["kd-summary"]
    report = json.loads((tmp_path / "kd" / "summary.json").read_text())
    t = table(w, "results")
    assert numbers(t["data"], t["columns"], t["columns"]) and [r[:2] for r in t["data"]] == [[2, 0.5], [4, 0.5]]
    assert [r[t["columns"].index("paired_mean")] for r in t["data"]] == [
        r["paired"]["mean"] for r in report["student_distill"]
    ]
    t = table(w, "students")
    assert len(t["data"]) == 6 and numbers(t["data"], t["columns"], t["columns"][2:])
    assert w["summary"]["student_baseline/test/acc_mean"] == report["student_baseline"]["test_acc_mean"]
    assert w["summary"]["student_distill_T4_a0.5/paired_mean"] == report["student_distill"][1]["paired"]["mean"]


def test_transfer_modes_and_summary_run(cifar_root, tmp_path):
    env = wandb_env(tmp_path)
    cnn = ["--model", "FlexibleCNN", "--layers", "1", "1", "--width", "8", "--residual", "--norm"]
    common = ["--dataset", "cifar10", "--data_root", cifar_root, "--save_dir", tmp_path, "--epochs", "1"]
    p = run_cli(
        "exercise1.py", *cnn, *common, "--run_name", "cnn", "--wandb", "offline", "--wandb_log_model", "all", env=env
    )
    assert p.returncode == 0, p.stderr
    (pre,) = runs_in(tmp_path / "cnn")
    assert [a["aliases"] for a in pre["artifacts"]] == [["epoch-1", "latest"], ["best", "latest"]]
    for mode in ("linear", "finetune"):
        p = run_cli(
            "exercise2.py",
            "--task",
            "finetune",
            "--pretrained",
            tmp_path / "cnn" / "best.pt",
            *common,
            "--run_name",
            "tr",
            "--mode",
            mode,
            "--overwrite",
            "--wandb",
            "offline",
            cwd=tmp_path,
            env=env,
        )
        assert p.returncode == 0, p.stderr
        runs = {w["job_type"]: w for w in runs_in(tmp_path / "tr")}
        assert set(runs) == {mode, "summary"} and {w["group"] for w in runs.values()} == {group_of(tmp_path / "tr")}
        assert runs[mode]["project"] == "finetune_cifar10"
        c = runs[mode]["config"]
        assert (c["kind"], c["phase"], c["mode"], c["model"], c["width"]) == ("finetune", mode, mode, "FlexibleCNN", 8)
        assert c["pretrained_artifact"] == f"Lab1_DLA_CNN/train-{pre['id']}:best"
        result = json.loads((tmp_path / "tr" / mode / "summary.json").read_text())
        assert runs[mode]["summary"]["test/acc"] == result["test_acc"]
        t = table(runs["summary"], "results")
        assert t["data"][0][:2] == [mode, result["test_acc"]]
        assert runs["summary"]["summary"][f"{mode}/test/acc"] == result["test_acc"]


def test_flat_config_holds_every_flag_under_its_name():
    """A sweep parameter is a flag; its W&B config key is the same name, for every setting flag of both scripts."""
    import exercise1
    import exercise2
    from config import NOT_SAVED, ExperimentConfig, TransferConfig

    not_settings = {"help", "overwrite", "resume", "notify", "no_augment", "workers", "report", "task", "use_skip"}
    not_settings |= set(NOT_SAVED) | {"config", "evaluate"}  # how to run, not what
    study_flags, transfer_flags = {"study", "depths", "seeds"}, {f for f in vars(TransferConfig())}
    args = exercise1.get_args_parser().parse_args([])
    keys = set(flat_config(exercise1.build_config(args)))
    assert {a.dest for a in exercise1.get_args_parser()._actions} - not_settings - study_flags <= keys
    args = exercise2.get_args_parser().parse_args([])
    cfg = exercise2.build_config(args)
    assert isinstance(cfg, ExperimentConfig)
    keys = set(flat_config(cfg))
    assert {a.dest for a in exercise2.get_args_parser()._actions} - not_settings - transfer_flags <= keys


def test_project_names_of_image_folders(tmp_path):
    cifar = tmp_path / "cifar10-jpeg"
    for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
        (cifar / "train" / c).mkdir(parents=True)
    assert data_name("folder", cifar) == "cifar10"  # meets the sweep's distillation_cifar10
    assert data_name("folder", write_folder(tmp_path / "my flowers")) == "my_flowers"
    assert data_name("folder", tmp_path / "missing") == "missing"
    assert data_name("fashion-mnist", "./data") == "fashion_mnist"


def test_sync_command_is_one_short_command(tmp_path, monkeypatch):
    wb = tmp_path
    monkeypatch.chdir(wb)

    def folder(path, run_id):
        (wb / path).mkdir(parents=True)
        (wb / path / f"run-{run_id}.wandb").write_bytes(b":W&B")
        return wb / path

    assert sync_command([]) is None and sync_command([None]) is None
    study = [folder(f"study/{c}/wandb/offline-run-20260101_000000-{c}", c) for c in ("d2", "d4")]
    assert sync_command(study) == "wandb sync study/*/wandb"
    phases = [folder(f"r2/{p}/wandb/offline-run-20260101_000000-{p}", p) for p in ("teacher", "student")]
    assert sync_command(phases) == "wandb sync r2/*/wandb"
    # A wandb/ folder shared with another run: only this run's folders, the resumed one (-1) included.
    folder("wandb/offline-run-20260101_000000-mine", "mine")
    again = folder("wandb/offline-run-20260101_000000-mine-1", "mine")
    folder("wandb/offline-run-20260101_000000-other", "other")
    assert sync_command([again]) == (
        "wandb sync wandb/offline-run-20260101_000000-mine wandb/offline-run-20260101_000000-mine-1"
    )
    spaced = folder("my runs/x/wandb/offline-run-20260101_000000-sp", "sp")
    assert sync_command([spaced, spaced]) == "wandb sync 'my runs/x/wandb'"
    assert sync_command([study[0], spaced]) == "wandb sync 'my runs/x/wandb' study/d2/wandb"
    outside = folder(f"../{wb.name}_out/wandb/offline-run-20260101_000000-o", "o")  # beside the cwd: absolute
    assert sync_command([outside]) == f"wandb sync {outside.resolve().parent}"
