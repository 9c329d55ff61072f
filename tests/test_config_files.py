"""config.json holds what the run reads: only the model fields its model reads (W&B's config is the same dict), and
older run folders that hold every field still resume."""

import json

import torch
from conftest import run_cli

from config import OutputConfig, RunConfig
from dataloader import DataConfig
from engine import TrainConfig
from models import CNN_ONLY, MLP_ONLY, ModelConfig

QUIET = ["--wandb", "disabled"]


def _config(model):
    return RunConfig(model, DataConfig(), TrainConfig(), OutputConfig())


def test_each_model_keeps_only_the_fields_it_reads():
    mlp = _config(ModelConfig(name="FlexibleMLP", depth=3)).to_dict()["model"]
    cnn = _config(ModelConfig(name="FlexibleCNN", layers=(1, 1))).to_dict()["model"]
    preset = _config(ModelConfig(name="resnet20", norm="batch")).to_dict()["model"]
    assert MLP_ONLY <= mlp.keys() and not CNN_ONLY & mlp.keys() and mlp["depth"] == 3
    assert CNN_ONLY <= cnn.keys() and not MLP_ONLY & cnn.keys() and cnn["layers"] == (1, 1)
    assert not (MLP_ONLY | CNN_ONLY | {"residual"}) & preset.keys()
    assert {"name", "norm", "init", "max_norm"} <= preset.keys()
    for d in (mlp, cnn, preset):  # read back: the fields left out take their defaults
        cfg = _config(ModelConfig()).to_dict()
        assert RunConfig.from_dict({**cfg, "model": d}).model.name == d["name"]


def test_run_folder_config_and_an_older_full_config_resumes(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--run_name", "r", "--hidden_size", "8", *QUIET]
    assert run_cli("exercise1.py", *args, "--epochs", "1").returncode == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert "layers" not in saved["model"] and "width" not in saved["model"] and saved["model"]["hidden_size"] == 8
    full = {**saved["model"], "layers": [2, 2, 2, 2], "block": "basic", "width": 64}  # as lab1 wrote it before
    (tmp_path / "r" / "config.json").write_text(json.dumps({**saved, "model": full}))
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    torch.save({**last, "config": {**last["config"], "model": full}}, tmp_path / "r" / "last.pt")
    p = run_cli("exercise1.py", "--resume", tmp_path / "r", "--epochs", "2")
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2


def _metrics(run):
    return [{k: v for k, v in json.loads(x).items() if "time" not in k} for x in (run / "metrics.jsonl").open()]


def test_a_finished_run_keeps_its_optimizer_state_only_when_asked(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--hidden_size", "8", *QUIET]
    assert run_cli("exercise1.py", *args, "--run_name", "full", "--epochs", "3").returncode == 0
    assert run_cli("exercise1.py", *args, "--run_name", "lean", "--epochs", "2").returncode == 0
    keep = run_cli("exercise1.py", *args, "--run_name", "kept", "--epochs", "2", "--keep_optimizer")
    assert keep.returncode == 0, keep.stderr
    lean, kept = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("lean", "kept"))
    assert "optimizer" not in lean and {"scheduler", "scaler", "rng", "model"} <= lean.keys()
    assert "optimizer" in kept
    p = run_cli("exercise1.py", "--resume", tmp_path / "kept", "--epochs", "3")
    assert p.returncode == 0 and "note:" not in p.stdout, p.stderr
    assert _metrics(tmp_path / "kept") == _metrics(tmp_path / "full")  # exactly as if it had run on
    assert "optimizer" in torch.load(tmp_path / "kept" / "last.pt", weights_only=True)
    p = run_cli("exercise1.py", "--resume", tmp_path / "lean", "--epochs", "3")
    assert p.returncode == 0, p.stderr
    assert "holds no optimizer state" in p.stdout and "starts afresh for epochs 3-3" in p.stdout
    assert _metrics(tmp_path / "lean")[:2] == _metrics(tmp_path / "full")[:2] and len(_metrics(tmp_path / "lean")) == 3
    assert "optimizer" not in torch.load(tmp_path / "lean" / "last.pt", weights_only=True)
    p = run_cli("exercise1.py", "--resume", tmp_path / "lean")  # finished: nothing to add, no note
    assert p.returncode == 0 and "note:" not in p.stdout
