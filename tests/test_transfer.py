"""Transfer learning (exercise2.py --task finetune) on tiny data."""

import json

import pytest
import torch
from conftest import run_cli

from dataloader import DataConfig
from datasets import DataSet, load_dataset
from models import ModelConfig, build_model
from optim import TrainConfig
from transfer import adapt_inputs, cached_features, prepare_finetune

QUIET = ["--wandb", "disabled"]


@pytest.fixture(scope="module")
def pretrained(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    p = run_cli(
        "exercise1.py",
        "--model",
        "FlexibleCNN",
        "--layers",
        "1",
        "1",
        "--width",
        "8",
        "--residual",
        "--norm",
        "--dataset",
        "cifar10",
        "--data_root",
        cifar_root,
        "--save_dir",
        out,
        "--run_name",
        "cnn",
        "--epochs",
        "1",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    return out / "cnn" / "best.pt"


def test_input_adaptation_grey_to_rgb_and_resize():
    x = torch.arange(2 * 28 * 28, dtype=torch.uint8).reshape(2, 1, 28, 28)
    ds = DataSet(x, torch.tensor([0, 1]), x.clone(), torch.tensor([1, 0]), ["a", "b"])
    out, changes = adapt_inputs(ds, (3, 32, 32))
    assert out.train_x.shape == (2, 3, 32, 32) and out.train_x.dtype == torch.uint8
    assert torch.equal(out.train_x[:, 0], out.train_x[:, 2])  # the grey channel copied to R, G and B
    assert changes == ["grey -> 3 channels", "resized 28x28 -> 32x32"]
    same, none = adapt_inputs(out, (3, 32, 32))
    assert same is out and none == []


def test_feature_extraction_shape_and_cache(cifar_root, tmp_path):
    ds = load_dataset("cifar10", cifar_root)
    model = build_model(ModelConfig(name="FlexibleCNN", layers=(1, 1), width=4, norm="batch"), ds.in_shape, 10)
    data, train = DataConfig(dataset="cifar10"), TrainConfig(device="cpu", amp="off")
    pre = tmp_path / "pre.pt"
    pre.write_bytes(b"x")
    splits = cached_features(model, ds, data, train, tmp_path, pre)
    assert splits["train"][0].shape == (225, 8) and splits["val"][0].shape == (25, 8)
    assert splits["test"][0].shape == (100, 8) and torch.equal(splits["test"][1], ds.test_y)
    assert (tmp_path / "features.pt").exists()
    torch.nn.init.zeros_(model.head.weight)
    again = cached_features(model, ds, data, train, tmp_path, pre)  # read back, not recomputed
    assert torch.equal(again["train"][0], splits["train"][0])


def test_freezing_really_freezes(cifar_root):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="FlexibleCNN", layers=(1, 1), width=4, norm="batch"), (3, 32, 32), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = prepare_finetune(model, 5, lr=0.1, backbone_lr_scale=0.1, freeze_stages=1)
    assert model.head.out_features == 5 and groups[1]["lr"] == pytest.approx(0.01)
    opt = torch.optim.SGD(groups, lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, 32, 32)).sum().backward()
        opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith(("stem.", "stages.0.")) and not k.endswith("num_batches_tracked"):
            assert torch.equal(before[k], after[k]), k  # weights and running statistics alike
    assert not torch.equal(before["stages.1.0.branch.0.weight"], after["stages.1.0.branch.0.weight"])


def test_all_modes_through_the_cli(pretrained, mnist_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        "--task",
        "finetune",
        "--pretrained",
        pretrained,
        "--dataset",
        "mnist",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "ft",
        "--epochs",
        "1",
        "--freeze_stages",
        "1",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    assert "adapting inputs to the pretrained network: grey -> 3 channels, resized 28x28 -> 32x32" in p.stdout
    run = tmp_path / "ft"
    s = json.loads((run / "summary.json").read_text())
    assert set(s) == {"linear", "svm", "finetune", "scratch"}
    assert all(0 <= r["test_acc"] <= 1 and r["train_time_s"] >= 0 for r in s.values())
    for f in ("results.md", "comparison.png", "features.pt", "finetune/metrics.jsonl", "scratch/metrics.jsonl"):
        assert (run / f).exists(), f
    pre = torch.load(pretrained, weights_only=True)["model"]
    tuned = torch.load(run / "finetune" / "best.pt", weights_only=True)
    assert torch.equal(pre["stem.0.weight"], tuned["model"]["stem.0.weight"])  # frozen
    assert tuned["arch"]["num_classes"] == 10 and tuned["arch"]["in_shape"] == [3, 32, 32]


def test_single_mode(pretrained, cifar_root, tmp_path):
    p = run_cli(
        "exercise2.py",
        "--task",
        "finetune",
        "--pretrained",
        pretrained,
        "--dataset",
        "cifar10",
        "--data_root",
        cifar_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "lin",
        "--mode",
        "linear",
        *QUIET,
    )
    assert p.returncode == 0, p.stderr
    assert "adapting" not in p.stdout
    assert set(json.loads((tmp_path / "lin" / "summary.json").read_text())) == {"linear"}


def test_errors(pretrained, mnist_root, tmp_path):
    base = ["--task", "finetune", "--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path / "r", *QUIET]
    mlp = run_cli(
        "exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "mlp", "--epochs", "1", *QUIET
    )
    assert mlp.returncode == 0
    for extra, message in [
        ([], "needs --pretrained"),
        (["--pretrained", tmp_path / "no.pt"], "does not exist"),
        (["--pretrained", tmp_path / "mlp" / "best.pt"], "not a CNN checkpoint"),
        (["--pretrained", pretrained, "--mode", "knn"], "--mode"),
        (["--pretrained", pretrained, "--freeze_stages", "5"], "--freeze_stages"),
    ]:
        p = run_cli("exercise2.py", *base, *extra)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (extra, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_finetune_is_reproducible(pretrained, mnist_root, tmp_path):
    """The new head is drawn from --seed: the same command gives the same training, whatever ran before it."""

    def metrics(name):
        p = run_cli(
            "exercise2.py",
            "--task",
            "finetune",
            "--pretrained",
            pretrained,
            "--dataset",
            "mnist",
            "--data_root",
            mnist_root,
            "--save_dir",
            tmp_path,
            "--run_name",
            name,
            "--mode",
            "finetune",
            "--epochs",
            "1",
            *QUIET,
        )
        assert p.returncode == 0, p.stderr
        torch.rand(7)  # moves the global generator, as anything else in the process might
        return [
            {k: v for k, v in json.loads(line).items() if "time" not in k}
            for line in (tmp_path / name / "finetune" / "metrics.jsonl").read_text().splitlines()
        ]

    assert metrics("a") == metrics("b")
