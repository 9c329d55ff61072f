"""figures.py and plots.py in-process: each figure draws the data it was given, titled and labelled, readable with
one epoch; the CLI fails with one line and exit 2 on input it cannot plot."""

import json

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv, to_rgb

import figures
import plots


@pytest.fixture
def figs(monkeypatch):
    """Every figure a plot function saves, kept for inspection (it is still written to disk)."""
    saved, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: (saved.append(fig), save(fig, path)))
    return saved


def record(epoch, val=True, **extra):
    """A metrics.jsonl line; values are exact in binary, so drawn data compares with ==."""
    return {
        "epoch": epoch,
        "train_loss": 2.0 / epoch,
        "train_acc": 0.5 + epoch / 64,
        "lr": 0.1,
        "val_loss": 3.0 / epoch if val else None,
        "val_acc": 0.25 + epoch / 64 if val else None,
        "grad_norm": {"fc1.weight": 0.1 * epoch, "proj.weight": 5.0, "fc2.weight": 0.01 * epoch},
        **extra,
    }


def visible_xticks(ax):
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_one_epoch_curves_show_points_titles_full_labels_and_integer_epochs(figs, tmp_path):
    drawn = figures.plot_curves([record(1)], tmp_path / "curves.png")
    assert drawn == {
        "train_loss": ([1], [2.0]),
        "val_loss": ([1], [3.0]),
        "train_acc": ([1], [0.515625]),
        "val_acc": ([1], [0.265625]),
    }
    assert (tmp_path / "curves.png").stat().st_size > 0
    (fig,) = figs
    assert fig._suptitle.get_text() == "training curves"
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_title()
        assert [line.get_label() for line in ax.lines] == ["train", "validation"]
        assert all(line.get_marker() not in (None, "None", "") for line in ax.lines)
        assert visible_xticks(ax) == [1.0]


def test_curves_without_validation_draw_train_only_and_long_runs_drop_markers(figs, tmp_path):
    history = [record(e, val=False) for e in range(1, 31)]
    drawn = figures.plot_curves(history, tmp_path / "c.png", title="run 7")
    assert set(drawn) == {"train_loss", "train_acc"} and drawn["train_acc"][0] == list(range(1, 31))
    assert figs[0]._suptitle.get_text() == "run 7"
    for ax in figs[0].axes:
        assert [line.get_marker() for line in ax.lines] == ["None"]
        assert all(float(t).is_integer() for t in visible_xticks(ax))


def test_grads_one_epoch_markers_and_data(figs, tmp_path):
    drawn = figures.plot_grads([record(1)], tmp_path / "grads.png", title="layers")
    assert drawn == {"fc1.weight": ([1], [0.1]), "proj.weight": ([1], [5.0]), "fc2.weight": ([1], [0.01])}
    (ax,) = figs[0].axes
    assert ax.get_title() == "layers" and ax.get_yscale() == "log" and ax.get_ylabel() == "mean gradient norm"
    assert all(line.get_marker() == "o" for line in ax.lines)


def test_overlay_draws_each_run_and_skips_missing_values(figs, tmp_path):
    curves = {"a": [record(1)], "b": [record(1), record(2, val=False), record(3)]}
    drawn = figures.plot_overlay(curves, tmp_path / "o.png")
    assert drawn == {"a": ([1], [0.265625]), "b": ([1, 3], [0.265625, 0.296875])}
    (ax,) = figs[0].axes
    assert ax.get_ylabel() == "validation accuracy" and ax.get_title() == "validation accuracy per epoch"
    assert ax.lines[0].get_marker() == "o" and visible_xticks(ax) == [1.0, 2.0, 3.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def texts_inside_axes(fig, ax):
    fig.canvas.draw()
    box = ax.get_window_extent()
    return all(
        box.x0 - 1 <= t.get_window_extent().x0
        and t.get_window_extent().x1 <= box.x1 + 1
        and box.y0 - 1 <= t.get_window_extent().y0
        and t.get_window_extent().y1 <= box.y1 + 1
        for t in ax.texts
    )


@pytest.mark.parametrize("values", [[0.1375, 0.1625], [0.99, 0.3, 1.0], [0.0, 0.02]])
def test_accuracy_bars_start_at_zero_stay_under_one_and_keep_labels_inside(figs, tmp_path, values):
    names = [f"m{i}" for i in range(len(values))]
    drawn = figures.plot_bars(names, values, ["1.0M params"] * len(values), tmp_path / "bars.png")
    assert drawn == dict(zip(names, values))
    fig = figs[0]
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    assert lo == 0 and max(values) <= hi <= 1.0
    assert ax.get_title() == "test accuracy" and ax.get_ylabel() == "test accuracy"
    assert [t.get_text() for t in ax.texts] == [f"{v:.4f}\n1.0M params" for v in values]
    assert texts_inside_axes(fig, ax)


def test_bars_of_other_quantities_go_above_one(figs, tmp_path):
    figures.plot_bars(["a", "b"], [120.0, 300.0], ["x", "y"], tmp_path / "t.png", ylabel="seconds", title="time")
    ax = figs[0].axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 300 and ax.get_title() == "time"
    assert texts_inside_axes(figs[0], ax)


def test_confusion_has_title_labelled_colour_bar_and_row_fractions(figs, tmp_path):
    drawn = figures.plot_confusion([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "cm.png")
    np.testing.assert_allclose(drawn, [[0.75, 0.25], [0.0, 1.0]])
    ax, cbar = figs[0].axes
    assert ax.get_title() == "confusion matrix" and cbar.get_ylabel() == "fraction of the true class"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "4"]


def test_heatmap_writes_values_and_leaves_missing_cells_blank(figs, tmp_path):
    values = [[0.91, None, 0.93], [float("nan"), 0.8, 0.85]]
    drawn = figures.plot_heatmap(
        values,
        [1, 4],
        [0.1, 0.5, 0.9],
        tmp_path / "h.png",
        "distillation grid",
        "test accuracy",
        fmt="{:.2f}",
        xlabel="alpha",
        ylabel="temperature",
    )
    np.testing.assert_allclose(drawn, [[0.91, np.nan, 0.93], [np.nan, 0.8, 0.85]])
    ax, cbar = figs[0].axes
    assert ax.get_title() == "distillation grid" and cbar.get_ylabel() == "test accuracy"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("alpha", "temperature")
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "0.91", (0, 1): "-", (0, 2): "0.93", (1, 0): "-", (1, 1): "0.80", (1, 2): "0.85"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5", "0.9"]


def hue(color):
    return float(rgb_to_hsv(to_rgb(color))[0])


def test_study_draws_both_panels_with_one_colour_family_per_kind(figs, tmp_path):
    rows = [
        {"model": kind, "depth": d, "test_acc_mean": m, "test_acc_std": s}
        for kind, d, m, s in [
            ("plain", 8, 0.7, 0.05),
            ("plain", 2, 0.9, 0.01),
            ("residual", 2, 0.91, 0.02),
            ("residual", 8, 0.93, 0.0),
        ]
    ]
    curves = {
        ("plain", 2): [record(1)],
        ("plain", 8): [record(1)],
        ("residual", 2): [record(1)],
        ("residual", 8): [record(1, val=False)],
    }
    drawn = figures.plot_study(rows, curves, tmp_path / "study.png", "MLP depth")
    assert drawn["test_acc"]["plain"][:2] == ([2, 8], [0.9, 0.7])
    assert drawn["test_acc"]["plain"][2] == pytest.approx([0.01, 0.05])
    assert drawn["test_acc"]["residual"][2] == pytest.approx([0.02, 0.0])
    v, t = [0.265625], [0.515625]
    assert drawn["curves"] == {
        "plain 2": ([1], v),
        "plain 8": ([1], v),
        "residual 2": ([1], v),
        "residual 8 (train acc: no validation split)": ([1], t),
    }
    left, right = figs[0].axes
    assert left.get_title() == "MLP depth" and left.get_xlabel() == "depth" and right.get_title()
    assert "training where no validation split" in right.get_ylabel()
    assert all(line.get_marker() == "o" for line in right.lines)
    left_lines = {bars.get_label(): bars.lines[0] for bars in left.containers}  # the error bars' data lines
    for kind, other in (("plain", "residual"), ("residual", "plain")):
        mine = [left_lines[kind]] + [ln for ln in right.lines if ln.get_label().startswith(kind)]
        theirs = [left_lines[other]] + [ln for ln in right.lines if ln.get_label().startswith(other)]
        assert len(mine) == 3 and len({ln.get_linestyle() for ln in mine}) == 1
        assert max(abs(hue(a.get_color()) - hue(b.get_color())) for a in mine for b in mine) < 0.05
        assert min(abs(hue(a.get_color()) - hue(b.get_color())) for a in mine for b in theirs) > 0.2
    shades = [ln.get_color() for ln in right.lines if ln.get_label().startswith("plain")]
    assert shades[0] != shades[1]  # depths told apart
    assert left_lines["plain"].get_linestyle() != left_lines["residual"].get_linestyle()


def test_layer_grads_first_epoch_main_path_only(figs, tmp_path):
    deep = [
        {
            "epoch": 1,
            "grad_norm": {
                "conv1.weight": 1e-1,
                "layer1.0.shortcut.0.weight": 9.0,
                "layer1.0.conv1.weight": 1e-2,
                "fc.weight": 1e-3,
            },
        },
        record(2),
    ]
    drawn = figures.plot_layer_grads(
        {"plain 20 (epoch 1)": deep, "residual 20": [record(1)], "empty": []}, tmp_path / "g.png"
    )
    assert drawn == {"plain 20 (epoch 1)": ([1, 2, 3], [1e-1, 1e-2, 1e-3]), "residual 20": ([1, 2], [0.1, 0.01])}
    (ax,) = figs[0].axes
    assert ax.get_yscale() == "log" and ax.get_title() and ax.get_xlabel() == "weight layer (input -> output)"
    assert [ln.get_linestyle() for ln in ax.lines] == ["--", "-"]
    assert all(float(t).is_integer() for t in visible_xticks(ax))


def write_run(folder, records=None, summary=None):
    folder.mkdir(parents=True, exist_ok=True)
    if records is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return str(folder)


def fails(capsys, argv):
    """Runs plots.main(argv), which must exit 2 with one stderr line; returns that line."""
    with pytest.raises(SystemExit) as e:
        plots.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("plots.py"), err
    return err


def test_compare_draws_the_runs(figs, tmp_path, capsys):
    a = write_run(tmp_path / "a", [record(1)])
    b = write_run(tmp_path / "b", [record(1), record(2)])
    out = tmp_path / "cmp.png"
    plots.main(["compare", a, b, "--metric", "train_loss", "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 0
    (ax,) = figs[0].axes
    assert [(ln.get_label(), list(ln.get_xdata()), ln.get_marker()) for ln in ax.lines] == [
        ("a", [1], "o"),
        ("b", [1, 2], "o"),
    ]
    assert ax.get_ylabel() == "training loss"


@pytest.mark.parametrize("metric", ["nonexistent", "grad_norm", "val_acc"])
def test_compare_refuses_a_metric_it_cannot_plot_and_names_those_it_can(tmp_path, capsys, metric):
    a = write_run(tmp_path / "a", [record(1, val=False)])
    err = fails(capsys, ["compare", a, "--metric", metric, "--out", str(tmp_path / "x.png")])
    assert repr(metric) in err and "train_acc" in err and "train_loss" in err
    assert "grad_norm" not in err.split(";")[1] and "val_acc" not in err.split(";")[1]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "content,what",
    [
        (None, "not found"),
        ("{not json\n", "cannot be read"),
        ("[1, 2]\n", "JSON object"),
        ('{"train_acc": 1}\n', "epoch"),
    ],
)
def test_compare_unreadable_run_is_one_line(tmp_path, capsys, content, what):
    (tmp_path / "r").mkdir()
    if content is not None:
        (tmp_path / "r" / "metrics.jsonl").write_text(content)
    assert what in fails(capsys, ["compare", str(tmp_path / "r")])


def test_table_prints_every_run_with_dashes_for_missing_numbers(tmp_path, capsys):
    a = write_run(
        tmp_path / "a",
        summary={
            "params": 1234567,
            "best_val_acc": None,
            "test_acc": 0.91,
            "test_loss": 0.3,
            "epochs_run": 2,
            "train_time_s": 12.34,
        },
    )
    b = write_run(tmp_path / "b", summary={"status": "failed", "error": "boom"})
    plots.main(["table", a, b])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| a | 1,234,567 | - | 0.9100 | 0.3000 | 2 | 12.3 |"
    assert lines[3] == "| b | - | - | - | - | - | - |" and len(lines) == 4


def test_compare_of_an_exercise2_folder_draws_its_phases(tmp_path, capsys):
    write_run(tmp_path / "kd", summary={"status": "finished"})
    for phase in ("student_baseline", "student_distill"):
        write_run(tmp_path / "kd" / phase, records=[{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}])
    out = tmp_path / "c.png"
    plots.main(["compare", str(tmp_path / "kd"), "--out", str(out)])
    assert out.stat().st_size > 0 and capsys.readouterr().out.strip() == str(out)


def test_table_of_a_study_folder_has_a_row_per_run_in_it(tmp_path, capsys):
    write_run(tmp_path / "study", summary={"status": "finished", "configurations": []})
    for name, acc in (("plain2_seed0", 0.9), ("residual2_seed0", 0.95)):
        write_run(tmp_path / "study" / name, summary={"test_acc": acc})
    (tmp_path / "study" / "not_a_run").mkdir()
    plots.main(["table", str(tmp_path / "study")])
    rows = [line.split(" | ")[:4] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["| study/plain2_seed0", "-", "-", "0.9000"], ["| study/residual2_seed0", "-", "-", "0.9500"]]


@pytest.mark.parametrize("content,what", [(None, "not found"), ("{oops", "cannot be read"), ("[]", "JSON object")])
def test_table_unreadable_summary_is_one_line(tmp_path, capsys, content, what):
    (tmp_path / "r").mkdir()
    if content is not None:
        (tmp_path / "r" / "summary.json").write_text(content)
    assert what in fails(capsys, ["table", str(tmp_path / "r")])


def test_bad_arguments_are_one_line_too(capsys):
    assert "--nope" in fails(capsys, ["table", "x", "--nope"])
