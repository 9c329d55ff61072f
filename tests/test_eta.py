"""Time-left estimates weigh what the remaining work costs (parameters x epochs x examples), not its count."""

import pytest
import torch

import distill
import eta
import study
from config import DistillConfig, ExperimentConfig, OutputConfig, RunConfig
from dataloader import DataConfig
from datasets import DataSet
from models import ModelConfig
from optim import TrainConfig


def test_estimate_and_the_left_line():
    assert eta.estimate(10.0, 100.0, 300.0) == 30.0 and eta.estimate(10.0, 100.0, 300.0, workers=2) == 15.0
    assert eta.estimate(10.0, 0.0, 300.0) == 0.0
    eta.later(0)
    assert eta.left(5, 0.1) == " | about 5 s left"
    eta.later(100)
    assert eta.left(5, 0.1) == " | about 5 s left here, 15 s in all"
    eta.later(100, workers=2)
    assert eta.left(5, 0.1) == " | about 5 s left here, 10 s in all"
    eta.later(0)


def test_run_cost_is_parameters_times_epochs_times_examples():
    y = torch.arange(100) % 10
    ds = DataSet(
        torch.zeros(100, 1, 4, 4, dtype=torch.uint8),
        y,
        torch.zeros(20, 1, 4, 4, dtype=torch.uint8),
        y[:20],
        list("abcdefghij"),
    )

    def cfg(width, epochs):
        model = ModelConfig(hidden_sizes=(width,))
        return RunConfig(model, DataConfig(val_split=0.1), TrainConfig(epochs=epochs), OutputConfig())

    params = 16 * 8 + 8 + 8 * 10 + 10
    assert eta.run_cost(cfg(8, 3), ds) == params * 3 * 90
    assert eta.run_cost(cfg(8, 3), ds, forward_params=300) == (params + 100) * 3 * 90


def test_a_studys_progress_line_weighs_the_children_left(tmp_path, monkeypatch, capsys):
    clock = {"t": 0.0}
    monkeypatch.setattr(study.time, "perf_counter", lambda: clock["t"])
    kids = [study.Child(name, "plain", None) for name in ("small", "small2", "big")]
    costs = {"small": 1.0, "small2": 1.0, "big": 8.0}
    seen = []

    def train_child(child, run_dir, saved):
        seen.append(eta._later["cost"])  # what the run's own epoch lines count after it
        clock["t"] += 5.0 * costs[child.name]  # 5 s per unit of cost
        (run_dir / "summary.json").write_text('{"status": "finished"}')

    study.work(kids, tmp_path, train_child, write_config=False, cost=lambda c: costs[c.name])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[")]
    assert lines[0] == "[1/3] small finished; about 45 s left"  # 1 + 8 units at 5 s each, not 2 children x 5 s
    assert lines[1] == "[2/3] small2 finished; about 40 s left" and lines[2] == "[3/3] big finished"
    assert seen == [9.0, 8.0, 0.0] and eta._later["cost"] == 0


@pytest.mark.parametrize("cached", [False, True])
def test_a_distilled_student_costs_the_teachers_forward_too(cached):
    y = torch.arange(100) % 10
    ds = DataSet(
        torch.zeros(100, 1, 4, 4, dtype=torch.uint8),
        y,
        torch.zeros(20, 1, 4, 4, dtype=torch.uint8),
        y[:20],
        list("abcdefghij"),
    )
    mlp = lambda w: ModelConfig(hidden_sizes=(w,))  # noqa: E731
    cfg = ExperimentConfig(
        mlp(64),
        mlp(8),
        DistillConfig(cache_teacher=cached),
        DataConfig(),
        TrainConfig(epochs=2),
        OutputConfig(),
    )
    cost = distill.student_cost(cfg, ds)
    alone, distilled = (cost(c) for c in distill.student_children(cfg))
    assert (distilled > alone) != cached and distilled >= alone
