"""Distillation: the loss itself, the teacher cache, and exercise2.py through its command line."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, write_cifar

from losses import DistillLoss, distillation_loss
from tracking import group_of

TINY = [
    "--epochs",
    "1",
    "--t_layers",
    "1",
    "1",
    "--t_width",
    "8",
    "--s_layers",
    "1",
    "--s_width",
    "4",
    "--wandb",
    "disabled",
]


def test_loss_matches_reference():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    T, a = 3.0, 0.3
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    ref = (1 - a) * F.cross_entropy(s, y) + a * T * T * kl
    loss, hard, soft = distillation_loss(s, t, y, T, a)
    assert torch.allclose(loss, ref, atol=1e-6) and torch.allclose(soft, T * T * kl, atol=1e-6)


def test_alpha_zero_is_cross_entropy():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    loss, _, _ = distillation_loss(s, t, y, 5.0, 0.0)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_identical_logits_give_zero_soft_term():
    s = torch.randn(6, 4)
    _, _, soft = distillation_loss(s, s.clone(), torch.zeros(6, dtype=torch.long), 7.0, 0.5)
    assert soft.abs() < 1e-6


def test_t_squared_keeps_soft_gradient_scale_constant():
    torch.manual_seed(0)
    t = torch.randn(16, 10) * 0.5
    s0 = torch.randn(16, 10) * 0.5
    norms = []
    for T in (4.0, 16.0):
        s = s0.clone().requires_grad_(True)
        _, _, soft = distillation_loss(s, t, torch.zeros(16, dtype=torch.long), T, 1.0)
        soft.backward()
        norms.append(s.grad.norm().item())
    assert abs(norms[0] / norms[1] - 1) < 0.1  # without T^2 the ratio would be about 16


def test_annealing_moves_alpha_and_t_linearly():
    loss = DistillLoss(temperature=10, alpha=0.9, temperature_end=2, alpha_end=0.1)
    loss.set_epoch(0, 5)
    assert (loss.temperature, loss.alpha) == (10, 0.9)
    loss.set_epoch(2, 5)
    assert loss.temperature == pytest.approx(6) and loss.alpha == pytest.approx(0.5)
    loss.set_epoch(4, 5)
    assert loss.temperature == pytest.approx(2) and loss.alpha == pytest.approx(0.1)


def test_cached_logits_equal_on_the_fly(cifar_root, tmp_path):
    """One cache of the whole training set serves every seed's split and subset: the rows a student's loader indexes
    are the teacher's logits of that student's own batches (a cache in one seed's split order once taught the other
    seeds mismatched soft targets)."""
    from dataclasses import replace

    from dataloader import make_loaders
    from datasets import load_dataset
    from distill import logits_for, teacher_logits
    from exercise2 import build_config, get_args_parser
    from models import ModelConfig, build_model

    args = get_args_parser().parse_args(["--data_root", str(cifar_root), "--device", "cpu", "--cache_teacher"])
    cfg = build_config(args)
    ds = load_dataset("cifar10", cifar_root)
    teacher = build_model(ModelConfig(name="FlexibleCNN", layers=(1,), width=4, norm="batch"), ds.in_shape, 10).eval()
    cached = teacher_logits(teacher, ds, cfg, tmp_path)
    assert cached.shape == (len(ds.train_y), 10)
    norm = make_loaders(ds, replace(cfg.data, augment=False), cfg.train.seed, "cpu").norm  # the teacher's inputs
    loss = DistillLoss(4.0, 0.5, teacher=teacher, autocast=_null)
    for seed, subset in ((0, 0), (1, 0), (2, 60)):
        pcfg = replace(cfg, train=replace(cfg.train, seed=seed), data=replace(cfg.data, subset=subset, norm=norm))
        pcfg = pcfg.phase("student_distill")
        mine, checked = logits_for(cached, ds, pcfg), 0
        for batch in make_loaders(ds, pcfg.data, seed, "cpu").train:
            assert torch.allclose(mine[batch.idx], loss.teacher_logits(batch), atol=1e-5)
            checked += len(batch.idx)
        assert checked == len(mine) < len(ds.train_y)


def test_an_older_cache_in_the_run_folder_is_computed_again(cifar_root, tmp_path, capsys):
    """A run folder's teacher_logits.pt from before the cache covered the whole training set (one seed's split,
    keyed without the normalisation) is not used: a resumed run computes it again."""
    from datasets import load_dataset
    from distill import teacher_logits
    from exercise2 import build_config, get_args_parser
    from models import ModelConfig, build_model

    cfg = build_config(get_args_parser().parse_args(["--data_root", str(cifar_root), "--device", "cpu"]))
    ds = load_dataset("cifar10", cifar_root)
    teacher = build_model(ModelConfig(name="FlexibleMLP", hidden_sizes=(8,)), ds.in_shape, 10).eval()
    old = {"teacher": "x", "dataset": "cifar10", "n": len(ds.train_y) - 10, "labels": "y"}
    torch.save({"key": old, "logits": torch.zeros(len(ds.train_y) - 10, 10)}, tmp_path / "teacher_logits.pt")
    logits = teacher_logits(teacher, ds, cfg, tmp_path)
    assert "computing it again" in capsys.readouterr().out
    assert logits.shape == (len(ds.train_y), 10) and logits.abs().sum() > 0
    assert torch.equal(torch.load(tmp_path / "teacher_logits.pt", weights_only=True)["logits"], logits)
    assert torch.equal(teacher_logits(teacher, ds, cfg, tmp_path), logits)  # now reused as it is
    assert (tmp_path / "teacher_logits.pt").exists()


def _null():
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("flag,dtype", [("auto", torch.float32), ("off", torch.float32), ("bf16", torch.bfloat16)])
def test_teacher_amp_sets_the_soft_targets_precision(cifar_root, flag, dtype):
    from dataloader import make_loaders
    from datasets import load_dataset
    from distill import distill_loss
    from exercise2 import build_config, get_args_parser
    from models import ModelConfig, build_model

    cfg = build_config(
        get_args_parser().parse_args(["--data_root", str(cifar_root), "--device", "cpu", "--teacher_amp", flag])
    )
    assert cfg.distill.teacher_amp == flag
    ds = load_dataset("cifar10", cifar_root)
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(name="FlexibleCNN", layers=(1,), width=8, norm="batch"), ds.in_shape, 10).eval()
    batch = next(iter(make_loaders(ds, cfg.data, 0, "cpu").train))
    logits = distill_loss(cfg, teacher).teacher_logits(batch)
    assert logits.dtype == dtype
    exact = DistillLoss(4.0, 0.5, teacher=teacher, autocast=_null).teacher_logits(batch)
    # bf16 keeps 8 bits of mantissa: the soft targets move by well under a percentage point.
    assert (torch.softmax(logits.float() / 4, 1) - torch.softmax(exact / 4, 1)).abs().max() < 0.01


def test_pipeline_leaves_every_file(cifar_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        *TINY,
        "--use_skip",
        "--temperature",
        "3.0",
        "--alpha",
        "0.5",
        "--run_name",
        "kd",
        "--teacher_amp",
        "bf16",
    )
    assert p.returncode == 0, p.stderr
    run = tmp_path / "kd"
    assert Path(p.stdout.strip().splitlines()[-1]) == run
    for f in (
        "teacher.pth",
        "student_baseline.pth",
        "student_distill.pth",
        "summary.json",
        "results.md",
        "comparison.png",
        "curves.png",
        "config.json",
        "command.txt",
    ):
        assert (run / f).stat().st_size > 0, f
    for phase in ("teacher", "student_baseline", "student_distill"):
        assert (run / phase / "metrics.jsonl").exists() and (run / phase / "curves.png").exists()
    s = json.loads((run / "summary.json").read_text())
    for phase in ("teacher", "student_baseline", "student_distill"):
        assert {"test_acc", "test_loss", "params", "train_time_s"} <= set(s[phase])
    assert 0 <= s["student_distill"]["agreement_with_teacher"] <= 1
    assert s["teacher"]["params"] > s["student_distill"]["params"] == s["student_baseline"]["params"]
    distill_metrics = json.loads((run / "student_distill" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_hard_loss", "train_soft_loss"} <= set(distill_metrics)
    assert "| Model | Params | Test acc" in (run / "results.md").read_text()
    assert json.loads((run / "config.json").read_text())["distill"]["teacher_amp"] == "bf16"
    ckpt = torch.load(run / "teacher.pth", weights_only=True)
    assert ckpt["arch"]["model"]["residual"] is True
    assert "optimizer" not in ckpt and os.path.samefile(run / "teacher.pth", run / "teacher" / "best.pt")  # lean


def test_teacher_ckpt_skips_teacher_training_and_cache(cifar_root, tmp_path):
    first = run_cli(
        "exercise2.py", "--data_root", cifar_root, "--save_dir", tmp_path, *TINY, "--run_name", "a", "--cache_teacher"
    )
    assert first.returncode == 0, first.stderr
    assert "teacher logits: computed once" in first.stdout
    p = run_cli(
        "exercise2.py",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        *TINY,
        "--run_name",
        "b",
        "--teacher_ckpt",
        tmp_path / "a" / "teacher.pth",
        "--cache_teacher",
        "--teacher_logits",
        tmp_path / "a" / "teacher_logits.pt",
    )
    assert p.returncode == 0, p.stderr
    assert "== teacher" not in p.stdout and "teacher: given by --teacher_ckpt" in p.stdout
    assert f"teacher logits: copied from {tmp_path / 'a' / 'teacher_logits.pt'}" in p.stdout
    cache = torch.load(tmp_path / "a" / "teacher_logits.pt", weights_only=True)
    assert torch.equal(torch.load(tmp_path / "b" / "teacher_logits.pt", weights_only=True)["logits"], cache["logits"])
    assert not (tmp_path / "b" / "teacher" / "metrics.jsonl").exists()
    a = json.loads((tmp_path / "a" / "summary.json").read_text())["teacher"]
    b = json.loads((tmp_path / "b" / "summary.json").read_text())["teacher"]
    assert a["test_acc"] == b["test_acc"] and a["params"] == b["params"]
    # A cache of another teacher is refused.
    other = run_cli(
        "exercise2.py",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        *TINY[:2],
        *TINY[7:],
        "--run_name",
        "c",
        "--teacher_ckpt",
        tmp_path / "a" / "student_distill.pth",
        "--cache_teacher",
        "--teacher_logits",
        tmp_path / "a" / "teacher_logits.pt",
    )
    assert other.returncode == 2 and "another teacher" in other.stderr and "Traceback" not in other.stderr
    # --overwrite of the folder that holds the cache (or the teacher) it reads: refused before anything is deleted
    given = ("--teacher_ckpt", tmp_path / "b" / "teacher.pth", "--cache_teacher")
    again = ("exercise2.py", "--data_root", cifar_root, "--save_dir", tmp_path, *TINY, "--run_name", "b", *given)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    p = run_cli(*again, "--teacher_logits", tmp_path / "b" / "teacher_logits.pt", "--overwrite")
    assert p.returncode == 2 and "--overwrite would delete" in p.stderr and "Traceback" not in p.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    # a cache saved with autograd history (requires_grad) holds the same numbers: used as they are
    torch.save({**cache, "logits": cache["logits"].clone().requires_grad_()}, tmp_path / "grad.pt")
    a_teacher = ("--teacher_ckpt", tmp_path / "a" / "teacher.pth", "--cache_teacher")
    p = run_cli(*again[:-4], "d", *a_teacher, "--teacher_logits", tmp_path / "grad.pt")
    assert p.returncode == 0, p.stderr
    # the run keeps its copy: a resume reads it, also when the given file is gone
    (tmp_path / "grad.pt").unlink()
    (tmp_path / "d" / "student_distill" / "summary.json").unlink()  # as if stopped before the end
    p = run_cli("exercise2.py", "--resume", tmp_path / "d")
    assert p.returncode == 0, p.stderr
    assert f"teacher logits: reusing {tmp_path / 'd' / 'teacher_logits.pt'}" in p.stdout


def test_reused_teacher_sees_its_own_input_normalisation(cifar_root, tmp_path):
    """Under another seed the training split, and so its pixel statistics, differ; the teacher must not notice."""
    for name, extra in (("a", []), ("b", ["--teacher_ckpt", tmp_path / "a" / "teacher.pth", "--seed", "1"])):
        p = run_cli(
            "exercise2.py", "--data_root", cifar_root, "--save_dir", tmp_path, *TINY, "--run_name", name, *extra
        )
        assert p.returncode == 0, p.stderr
    norm = torch.load(tmp_path / "a" / "teacher.pth", weights_only=True)["arch"]["input_norm"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["data"]["norm"] == [list(v) for v in norm]
    a, b = (json.loads((tmp_path / r / "summary.json").read_text())["teacher"] for r in "ab")
    assert a["test_loss"] == b["test_loss"]
    # The students of seed 1 were trained on a split whose own statistics differ from the teacher's.
    students = torch.load(tmp_path / "b" / "student_baseline.pth", weights_only=True)["arch"]["input_norm"]
    assert students == norm


def test_hinton_mnist_command(mnist_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--dataset",
        "mnist",
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "1200",
        "1200",
        "--t_dropout",
        "0.5",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "800",
        "800",
        "--temperature",
        "20",
        "--epochs",
        "1",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((Path(p.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    assert s["teacher"]["params"] == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--alpha", "1.5"], "--alpha"),
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "-2"], "--temperature"),
        (["--teacher_ckpt", "/nonexistent.pth"], "does not exist"),
        (["--teacher_logits", "x.pt"], "needs --cache_teacher"),
        (["--teacher_amp", "fp16", "--device", "cpu"], "--teacher_amp fp16 needs a CUDA device"),
    ],
)
def test_errors(cifar_root, tmp_path, extra, message):
    p = run_cli("exercise2.py", "--data_root", cifar_root, "--save_dir", tmp_path / "r", *TINY, *extra)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_teacher_of_another_class_count_or_corrupt(tmp_path):
    c10 = write_cifar(tmp_path / "c10")
    c20 = write_cifar(tmp_path / "c20", classes=20)
    p = run_cli(
        "exercise1.py",
        "--model",
        "FlexibleCNN",
        "--layers",
        "1",
        "--width",
        "4",
        "--dataset",
        "cifar100",
        "--data_root",
        c20,
        "--save_dir",
        tmp_path,
        "--run_name",
        "t20",
        "--epochs",
        "1",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    p = run_cli(
        "exercise2.py",
        "--data_root",
        c10,
        "--save_dir",
        tmp_path / "r",
        *TINY,
        "--teacher_ckpt",
        tmp_path / "t20" / "best.pt",
    )
    assert p.returncode == 2 and "20 classes" in p.stderr and not (tmp_path / "r").exists()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    p = run_cli("exercise2.py", "--data_root", c10, "--save_dir", tmp_path / "r", *TINY, "--teacher_ckpt", bad)
    assert p.returncode == 2 and "corrupt" in p.stderr


def test_sweep_yaml_works_as_written_under_an_agent(mnist_root, tmp_path):
    """Two trials of sweeps/distill_grid.yaml, as `wandb agent` starts them (WANDB_SWEEP_ID, WANDB_RUN_ID): the
    teacher is trained by the first and reused by the second, and each process is one W&B run whose summary holds
    the sweep's metric under the student_distill/ prefix."""
    import yaml
    from wandb_reader import read_offline_run

    spec = yaml.safe_load((Path(__file__).parent.parent / "sweeps" / "distill_grid.yaml").read_text())
    fixed = {k: v["value"] for k, v in spec["parameters"].items() if "value" in v}
    assert fixed["teacher_dir"] and "TEACHER_RUN" not in str(fixed)
    tiny = {
        "dataset": "mnist",
        "data_root": mnist_root,
        "student": "FlexibleMLP",
        "s_hidden_sizes": 8,
        "teacher": "FlexibleMLP",
        "t_hidden_sizes": 16,
        "epochs": 1,
        "save_dir": tmp_path / "runs",
        "teacher_dir": tmp_path / "teacher",
        "wandb": "offline",
    }
    metric = spec["metric"]["name"]
    for trial, t in enumerate(spec["parameters"]["temperature"]["values"][:2]):
        params = {**fixed, **tiny, "temperature": t, "alpha": spec["parameters"]["alpha"]["values"][0]}
        argv = [f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if v is not False]
        p = run_cli(
            "exercise2.py",
            *argv,
            cwd=tmp_path,
            process=True,  # an agent starts a process per trial
            env={"WANDB_SWEEP_ID": "sweep", "WANDB_RUN_ID": f"trial{trial}", "WANDB_DIR": str(tmp_path)},
        )
        assert p.returncode == 0, p.stderr
        assert ("== teacher (shared" in p.stdout) == (trial == 0)
        assert Path(p.stdout.strip().splitlines()[-1]).is_dir()
        runs = [r for r in tmp_path.rglob("offline-run-*") if r.name.endswith(f"-trial{trial}")]
        assert len(runs) == 1, runs  # one W&B run for the whole process
        w = read_offline_run(runs[0])
        assert w["id"] == f"trial{trial}" and metric in w["summary"] and "student_distill/test/acc" in w["summary"]
        assert "student_baseline/test/acc" in w["summary"]
        assert ("== student_baseline (shared" in p.stdout) == (trial == 0)  # --baseline_dir: trained once


def test_wandb_holds_every_phase_result_grouped(mnist_root, tmp_path):
    """Each phase is a W&B run of the group (= the run folder) with job_type = phase, its final summary and its
    figures; a summary run of the group holds the comparison and the results table."""
    from wandb_reader import read_offline_run

    p = run_cli(
        "exercise2.py",
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "kd",
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "16",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--epochs",
        "2",
        "--wandb",
        "offline",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    run = tmp_path / "kd"
    assert p.stdout.count("wandb sync") == 1
    summary = json.loads((run / "summary.json").read_text())
    runs = {w["job_type"]: w for w in map(read_offline_run, run.rglob("offline-run-*"))}
    assert set(runs) == {"teacher", "student_baseline", "student_distill", "summary"}
    assert {w["group"] for w in runs.values()} == {group_of(run)} and group_of(run).startswith("kd-")
    for phase in ("teacher", "student_baseline", "student_distill"):
        s, c = runs[phase]["summary"], runs[phase]["config"]
        assert s["test/acc"] == summary[phase]["test_acc"] and {"params", "best_epoch", "test/loss"} <= set(s)
        assert {"curves", "confusion"} <= set(s), set(s)
        assert (c["kind"], c["phase"], c["temperature"], c["alpha"], c["teacher"], c["t_hidden_sizes"]) == (
            "exercise2",
            phase,
            4.0,
            0.5,
            "FlexibleMLP",
            [16],
        )
    s = runs["summary"]["summary"]
    assert s["student_distill/gap_closed"] == summary["student_distill"]["gap_closed"]
    assert "student_distill/agreement_with_teacher" in s and "comparison" in s and "results" in s


def test_run_folder_stores_no_model_twice(mnist_root, tmp_path):
    """Published models hold weights, architecture and normalisation only, as second names of the phases'
    best.pt; last.pt alone holds the training state: all checkpoint files at most 5.5x the models' weights."""
    p = run_cli(
        "exercise2.py",
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "kd",
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "400",
        "400",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "100",
        "--epochs",
        "2",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    run, seen, total = tmp_path / "kd", set(), 0
    for f in run.rglob("*"):
        if f.suffix in (".pt", ".pth") and f.stat().st_ino not in seen:
            seen.add(f.stat().st_ino)
            total += f.stat().st_size
    weights = 0
    for name in ("teacher", "student_baseline", "student_distill"):
        ckpt = torch.load(run / f"{name}.pth", weights_only=True)
        assert set(ckpt) <= {"format", "arch", "model", "epoch"} and "input_norm" in ckpt["arch"]
        assert os.path.samefile(run / f"{name}.pth", run / name / "best.pt")
        weights += sum(v.numel() * v.element_size() for v in ckpt["model"].values())
    assert total <= 5.5 * weights, total / weights


def test_resume_uses_the_runs_own_teacher_when_the_given_file_is_gone(mnist_root, tmp_path):
    args = [
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "16",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--epochs",
        "1",
        "--wandb",
        "disabled",
    ]
    assert run_cli("exercise2.py", *args, "--save_dir", tmp_path, "--run_name", "a").returncode == 0
    given = tmp_path / "given.pth"
    given.write_bytes((tmp_path / "a" / "teacher.pth").read_bytes())
    p = run_cli("exercise2.py", *args, "--save_dir", tmp_path, "--run_name", "b", "--teacher_ckpt", given)
    assert p.returncode == 0, p.stderr
    given.unlink()
    (tmp_path / "b" / "student_distill" / "summary.json").unlink()  # as if stopped before its end
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert "given by --teacher_ckpt" in p.stdout and str(tmp_path / "b" / "teacher.pth") in p.stdout
    report = (tmp_path / "b" / "results.md").read_bytes()
    p = run_cli("exercise2.py", "--resume", tmp_path / "b")  # finished now: the report again, nothing trained
    assert p.returncode == 0 and " epoch " not in p.stdout, p.stdout
    assert (tmp_path / "b" / "results.md").read_bytes() == report


def test_a_diverging_phase_leaves_failed_summaries(mnist_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "16",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--epochs",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "1e5",
        "--wandb",
        "disabled",
        "--save_dir",
        tmp_path,
        "--run_name",
        "kd",
    )
    assert p.returncode == 3 and "diverged" in p.stderr.strip().splitlines()[-1]
    for f in ("summary.json", "teacher/summary.json"):
        assert json.loads((tmp_path / "kd" / f).read_text())["status"] == "failed"


def test_seeds_and_kd_grid_report_paired_statistics(mnist_root, tmp_path):
    from stats import paired

    base = [
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "16",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--epochs",
        "1",
        "--wandb",
        "disabled",
        "--cache_teacher",
    ]
    p = run_cli("exercise2.py", *base, "--run_name", "seeds", "--seeds", "0", "1", "2")
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "seeds" / "summary.json").read_text())
    alone = [s["students"][f"student_baseline_seed{i}"]["test_acc"] for i in range(3)]
    dist = [s["students"][f"student_distill_seed{i}"]["test_acc"] for i in range(3)]
    want = paired(dist, alone)
    assert s["paired"]["seeds"] == want["seeds"] == 3
    assert [s["paired"][k] for k in ("mean", "std")] == pytest.approx([want["mean"], want["std"]])
    assert s["paired"]["ci95"] == pytest.approx(want["ci95"])
    assert set(s["paired"]) == {"mean", "std", "seeds", "ci95"}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    if s["teacher"]["test_acc"] > mean(alone):  # the gap closed, from the means the table shows
        assert s["gap_closed"] == pytest.approx((mean(dist) - mean(alone)) / (s["teacher"]["test_acc"] - mean(alone)))
    else:
        assert s["gap_closed"] is None
    assert "Distilled - alone (paired)" in (tmp_path / "seeds" / "results.md").read_text()
    p = run_cli(
        "exercise2.py",
        *base,
        "--run_name",
        "grid",
        "--study",
        "kd_grid",
        "--temperatures",
        "2",
        "8",
        "--alphas",
        "0.5",
        "--seeds",
        "0",
        "1",
        "--teacher_ckpt",
        tmp_path / "seeds" / "teacher.pth",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("== student_baseline") == 2  # once per seed, not per (T, alpha)
    rows = json.loads((tmp_path / "grid" / "summary.json").read_text())["student_distill"]
    assert sorted((r["temperature"], r["alpha"]) for r in rows) == [(2.0, 0.5), (8.0, 0.5)]
    assert all(r["paired"]["seeds"] == 2 for r in rows) and (tmp_path / "grid" / "comparison.png").exists()
