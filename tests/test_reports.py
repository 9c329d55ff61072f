"""Results as tables and figures say them: --test_subset marked wherever its figures appear, one seed without a
"± 0.0000", figures that say what they draw (colour bar of deep nets, best epoch), transfer probes with C chosen on
the validation split."""

import json

import pytest
import torch
from conftest import run_cli

import figures
import plots
from dataloader import DataConfig
from datasets import DataSet
from probes import C_GRID, classical
from splits import check_sizes, examples_tested

QUIET = ["--wandb", "disabled", "--epochs", "1", "--hidden_size", "8", "--depth", "1"]


def test_a_run_on_a_test_subset_says_so_and_records_it(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, "--save_dir", tmp_path, *QUIET]
    p = run_cli("exercise1.py", *base, "--run_name", "sub", "--test_subset", "50")
    assert p.returncode == 0, p.stderr
    assert (
        "50 test examples (--test_subset of 100)" in p.stdout and "test (50 examples, --test_subset) loss" in p.stdout
    )
    s = json.loads((tmp_path / "sub" / "summary.json").read_text())
    assert s["test_examples"] == 50 and s["test_subset"] == 50 and sum(map(sum, s["confusion"])) == 50
    p = run_cli("exercise1.py", *base, "--run_name", "all")
    assert p.returncode == 0 and "test (100 examples) loss" in p.stdout
    s = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert s["test_examples"] == 100 and s["test_subset"] == 0
    table = run_cli("plots.py", "table", tmp_path / "sub", tmp_path / "all")
    rows = {line.split(" | ")[0][2:]: line for line in table.stdout.splitlines() if line.startswith("| ")}
    assert "†" in rows["sub"].split(" | ")[3] and "†" not in rows["all"] and "50-example subset" in table.stdout


def test_the_test_subset_is_stratified_and_the_same_for_every_seed():
    y = torch.arange(1000) % 10
    ds = DataSet(
        torch.zeros(1000, 1, 2, 2, dtype=torch.uint8),
        y,
        torch.zeros(1000, 1, 2, 2, dtype=torch.uint8),
        y,
        list("abcdefghij"),
    )
    cfg = DataConfig(test_subset=200)
    x1, y1 = examples_tested(ds, cfg)
    assert len(y1) == 200 and torch.bincount(y1).tolist() == [20] * 10
    assert check_sizes(ds, cfg, seed=0)["test"] == check_sizes(ds, cfg, seed=5)["test"] == 200
    assert torch.equal(examples_tested(ds, cfg)[1], y1)  # no seed goes in: every run is tested on these examples


def test_one_seed_study_has_no_spread_and_marks_its_test_subset(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        *["--data_root", mnist_root, "--save_dir", tmp_path, "--study", "mlp_depth", "--depths", "1"],
        *["--seeds", "0", "--test_subset", "50", *QUIET[:4]],
    )
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "mlp_depth" / "results.md").read_text()
    header, rows = (
        md.splitlines()[0],
        [x for x in md.splitlines()[2:] if x.startswith("| plain") or x.startswith("| residual")],
    )
    assert "Test acc†" in header and "mean ± std" not in header and len(rows) == 2
    assert all("±" not in r for r in rows) and "50-example subset of the test set" in md
    s = json.loads((tmp_path / "mlp_depth" / "summary.json").read_text())
    assert s["test_subset"] == 50 and s["test_examples"] == 50


def test_one_seed_distillation_has_no_spread_and_marks_its_test_subset(mnist_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        *["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "kd"],
        *["--teacher", "FlexibleMLP", "--t_hidden_sizes", "16", "--student", "FlexibleMLP", "--s_hidden_sizes", "8"],
        *["--seeds", "3", "--test_subset", "40", "--epochs", "1", "--wandb", "disabled"],
    )
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "kd" / "results.md").read_text()
    assert "± 0.0000" not in md and "Test acc† |" in md and "40-example subset" in md
    assert json.loads((tmp_path / "kd" / "summary.json").read_text())["test_examples"] == 40


@pytest.fixture
def figs(monkeypatch):
    saved, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: (saved.append(fig), save(fig, path)))
    return saved


def test_deep_nets_gradients_get_a_colour_bar_from_input_to_output(figs, tmp_path):
    history = [{"epoch": e, "grad_norm": {f"l{i}": 0.1 * (i + 1) for i in range(20)}} for e in (1, 2)]
    figures.plot_grads(history, tmp_path / "g.png", title="r: per-layer gradient norm")
    ax, bar = figs[0].axes
    assert ax.get_legend() is None and "input" in bar.get_ylabel() and "20 (output)" in bar.get_ylabel()
    figures.plot_grads(history[:1] and [{"epoch": 1, "grad_norm": {"a": 1.0, "b": 2.0}}], tmp_path / "h.png")
    assert len(figs[1].axes) == 1 and figs[1].axes[0].get_legend() is not None


def test_curves_mark_the_best_epoch(figs, tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.1 * e} for e in (1, 2, 3)
    ]
    figures.plot_curves(history, tmp_path / "c.png", best_epoch=2)
    for ax in figs[0].axes:
        marks = [ln for ln in ax.lines if ln.get_label().startswith("best epoch")]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]


def test_one_seed_study_figure_has_no_error_bars_and_says_so(figs, tmp_path):
    rows = [{"model": "plain", "depth": d, "test_acc_mean": 0.9, "test_acc_std": 0.0, "seeds": 1} for d in (2, 4)]
    drawn = figures.plot_study(rows, {("plain", 2): [{"epoch": 1, "val_acc": 0.5}]}, tmp_path / "s.png", "t")
    left = figs[0].axes[0]
    assert left.get_ylabel() == "test accuracy (one seed)" and drawn["test_acc"]["plain"][2] is None
    rows = [{**r, "seeds": 3, "test_acc_std": 0.01} for r in rows]
    figures.plot_study(rows, {}, tmp_path / "s.png", "t")
    assert figs[1].axes[0].get_ylabel() == "test accuracy (mean ± std over seeds)"


def _features(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 8, generator=g) + torch.nn.functional.one_hot(y, 8).float() * 1.5
    return x, y


def test_probes_choose_c_on_the_validation_split():
    splits = {"train": _features(120, 0), "val": _features(60, 1), "test": _features(60, 2)}
    for mode in ("linear", "svm"):
        r = classical(mode, splits, seed=0)
        assert r["C"] in C_GRID and set(r["val_acc_by_C"]) == {f"{c:g}" for c in C_GRID}
        assert r["val_acc"] == max(r["val_acc_by_C"].values()) and 0 <= r["test_acc"] <= 1
        assert r["test_examples"] == 60
    r = classical("linear", {**splits, "val": None}, seed=0)
    assert r["C"] == 1.0 and r["val_acc"] is None


def test_plots_table_marks_only_subset_runs(tmp_path, capsys):
    for name, subset in (("a", 0), ("b", 500)):
        (tmp_path / name).mkdir()
        summary = {"test_acc": 0.5, "params": 10, "test_subset": subset}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    plots.main(["table", str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "| a | 10 | - | 0.5000 |" in out and "| b | 10 | - | 0.5000† |" in out and "500-example" in out
