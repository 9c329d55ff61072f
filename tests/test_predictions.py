"""Per-example test results: every run's test_predictions.npy, and the paired tests built on them (McNemar's exact
test in exercise2's and a study's reports)."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from pooled import pool
from stats import mcnemar

QUIET = ["--epochs", "1", "--wandb", "disabled"]


def load(folder):
    return np.load(folder / "test_predictions.npy", allow_pickle=False)


def test_a_run_saves_each_test_examples_prediction_in_test_set_order(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--hidden_size", "16", *QUIET]
    assert run_cli("exercise1.py", *args, "--run_name", "all").returncode == 0
    rows, s = load(tmp_path / "all"), json.loads((tmp_path / "all" / "summary.json").read_text())
    assert list(rows["index"]) == list(range(s["test_examples"]))
    assert (rows["label"] == rows["pred"]).mean() == pytest.approx(s["test_acc"])
    confusion = np.zeros_like(np.array(s["confusion"]))
    np.add.at(confusion, (rows["label"], rows["pred"]), 1)
    assert confusion.tolist() == s["confusion"]
    assert run_cli("exercise1.py", *args, "--run_name", "part", "--test_subset", "30").returncode == 0
    part = load(tmp_path / "part")
    assert len(part) == 30 and len(set(part["index"])) == 30 and set(part["index"]) <= set(rows["index"])
    assert (part["label"] == rows["label"][part["index"]]).all()  # the same examples, by their index


def test_exercise2_reports_mcnemar_distilled_against_alone(mnist_root, tmp_path):
    args = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--teacher", "FlexibleMLP"]
    args += ["--t_hidden_sizes", "16", "--student", "FlexibleMLP", "--s_hidden_sizes", "8", *QUIET]
    assert run_cli("exercise2.py", *args, "--run_name", "one").returncode == 0
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    d, a = (load(tmp_path / "one" / phase) for phase in ("student_distill", "student_baseline"))
    assert s["student_distill"]["mcnemar_vs_alone"] == mcnemar(d["label"] == d["pred"], a["label"] == a["pred"])
    assert "McNemar exact" in (tmp_path / "one" / "results.md").read_text()
    gap = s["student_distill"]["bootstrap_gap_closed"]  # its observed value is the table's gap closed
    assert gap["value"] == pytest.approx(s["student_distill"]["gap_closed"]) or gap["value"] is None
    assert run_cli("exercise2.py", *args, "--run_name", "seeds", "--seeds", "0", "1").returncode == 0
    row = json.loads((tmp_path / "seeds" / "summary.json").read_text())["student_distill"][0]
    assert set(row["mcnemar_per_seed"]) == {"0", "1"}
    per = row["mcnemar_per_seed"].values()
    assert row["mcnemar_pooled"]["a_only"] == sum(m["a_only"] for m in per)  # pooled: the seeds' examples together
    assert row["mcnemar_pooled"]["n"] == sum(m["n"] for m in per)


def test_a_study_reports_mcnemar_residual_against_plain(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--study", "mlp_depth", "--depths", "2"]
    assert run_cli("exercise1.py", *args, "--seeds", "0", "--hidden_size", "16", *QUIET).returncode == 0
    study = tmp_path / "mlp_depth"
    r, p = load(study / "residual2_seed0"), load(study / "plain2_seed0")
    want = mcnemar(r["label"] == r["pred"], p["label"] == p["pred"])
    assert json.loads((study / "summary.json").read_text())["residual_vs_plain_mcnemar"] == {"2": want}
    assert "Residual vs plain, example by example" in (study / "results.md").read_text()


def test_plots_pool_pools_seeds_folders_of_several_teachers(mnist_root, tmp_path):
    args = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--teacher", "FlexibleMLP"]
    args += ["--t_hidden_sizes", "16", "--student", "FlexibleMLP", "--s_hidden_sizes", "8", *QUIET]
    for t, seeds in ((1, ["10", "11"]), (2, ["20", "21"])):
        assert (
            run_cli("exercise2.py", *args, "--seed", str(t), "--seeds", *seeds, "--run_name", f"t{t}").returncode == 0
        )
    out, lines = pool([tmp_path / "t1", tmp_path / "t2"])
    correct = {
        (t, k, s): (lambda r: r["label"] == r["pred"])(load(tmp_path / f"t{t}" / f"{k}_seed{s}"))
        for t, seeds in ((1, (10, 11)), (2, (20, 21)))
        for s in seeds
        for k in ("student_distill", "student_baseline")
    }
    n = len(next(iter(correct.values())))
    teachers = [n - (lambda r: (r["label"] == r["pred"]).sum())(load(tmp_path / f"t{t}" / "teacher")) for t in (1, 2)]
    assert out["teacher_errors"]["mean"] == pytest.approx(np.mean(teachers)) and out["teacher_errors"]["seeds"] == 2
    d = [v for (t, k, s), v in correct.items() if k == "student_distill"]
    a = [v for (t, k, s), v in correct.items() if k == "student_baseline"]
    assert out["distilled_errors"]["mean"] == pytest.approx(np.mean([n - c.sum() for c in d]))
    assert out["mcnemar_pooled"]["a_only"] == sum(int((x & ~y).sum()) for x, y in zip(d, a))
    assert out["distilled_minus_alone_over_pairs"]["seeds"] == 4
    assert out["distilled_minus_alone_over_teachers"]["seeds"] == 2
    assert out["bootstrap_vs_alone"]["mean"] == pytest.approx(np.mean(d) - np.mean(a))
    assert any("McNemar exact, n=" in line for line in lines)
    r = run_cli("plots.py", "pool", tmp_path / "t1", tmp_path / "t2")
    assert r.returncode == 0 and "teacher test errors" in r.stdout
    r = run_cli("plots.py", "pool", tmp_path / "t1" / "teacher")  # a run folder, not an exercise2 --seeds folder
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not an exercise2 folder" in r.stderr


def test_plots_pool_reads_a_given_teacher_and_refuses_what_would_count_a_net_twice(mnist_root, tmp_path):
    data = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, *QUIET]
    for t in (1, 2):
        args = [*data, "--hidden_sizes", "16", "--seed", str(t), "--run_name", f"teacher{t}"]
        assert run_cli("exercise1.py", *args).returncode == 0
    kd = [*data, "--student", "FlexibleMLP", "--s_hidden_sizes", "8"]

    def distil(name, t, *extra):
        ckpt = tmp_path / f"teacher{t}" / "best.pt"
        assert run_cli("exercise2.py", *kd, "--teacher_ckpt", ckpt, *extra, "--run_name", name).returncode == 0
        return tmp_path / name

    a, b = distil("a", 1, "--seeds", "10"), distil("b", 2, "--seeds", "20")
    teacher = np.load(a / "teacher_test_predictions.npy")  # a given teacher's test predictions, saved by exercise2
    assert (teacher["pred"] == load(tmp_path / "teacher1")["pred"]).all()
    assert pool([a, b])[0]["teacher_errors"]["seeds"] == 2
    (b / "teacher_test_predictions.npy").unlink()  # as in folders made before: the checkpoint's run folder's
    assert pool([a, b])[0]["teacher_errors"]["mean"] == pytest.approx(
        np.mean([(lambda r: (r["label"] != r["pred"]).sum())(load(tmp_path / f"teacher{t}")) for t in (1, 2)])
    )
    refusals = {
        "a folder is given twice": [a, tmp_path / "." / "a"],
        "student seed 10 is in": [a, distil("c", 2, "--seeds", "10")],
        "same teacher": [a, distil("d", 1, "--seeds", "30")],
        "differ in distill.temperature": [a, distil("e", 2, "--seeds", "40", "--temperature", "2")],
    }
    for message, folders in refusals.items():
        r = run_cli("plots.py", "pool", *folders)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (message, r.stderr)
    (a / "student_baseline_seed10" / "test_predictions.npy").write_bytes(b"")
    r = run_cli("plots.py", "pool", a, b)
    assert r.returncode == 2 and "unreadable or damaged" in r.stderr and "Traceback" not in r.stderr
    torch.save({"not": "the teacher"}, tmp_path / "teacher2" / "best.pt")  # b's teacher replaced: refused
    r = run_cli("plots.py", "pool", distil("f", 1, "--seeds", "50"), b)
    assert r.returncode == 2 and "no longer the teacher" in r.stderr
