"""config.json holds what the run reads: only the model fields its model reads (W&B's config is the same dict), and
older run folders that hold every field still resume."""

import json

import torch
from conftest import run_cli

from config import OutputConfig, RunConfig
from dataloader import DataConfig
from models import CNN_ONLY, MLP_ONLY, ModelConfig
from optim import TrainConfig

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


def test_config_starts_a_new_run_with_its_settings_and_flags_beside_it_win(mnist_root, tmp_path):
    args = ["--data_root", mnist_root, "--save_dir", tmp_path, "--hidden_sizes", "12", "6", "--dropout", "0.1"]
    p = run_cli("exercise1.py", *args, "--run_name", "a", "--lr", "3e-3", "--epochs", "1", "--augment", *QUIET)
    assert p.returncode == 0, p.stderr
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    edited = {**saved, "train": {**saved["train"], "lr": 0.01}}
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    p = run_cli("exercise1.py", "--config", tmp_path / "edited.json", "--run_name", "b", "--epochs", "2")
    assert p.returncode == 0, p.stderr
    new = json.loads((tmp_path / "b" / "config.json").read_text())
    assert new["train"]["lr"] == 0.01 and new["train"]["epochs"] == 2 and new["output"]["run_name"] == "b"
    assert new["model"] == saved["model"] and new["data"] == saved["data"]
    p = run_cli("exercise1.py", "--config", tmp_path / "a" / "config.json", "--depth", "2", "--run_name", "c")
    assert p.returncode == 0, p.stderr  # a typed --depth replaces the file's --hidden_sizes
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c["model"]["depth"] == 2 and c["model"]["hidden_sizes"] == [] and c["model"]["dropout"] == 0.1


def test_a_file_that_is_not_a_lab1_config_is_one_line(mnist_root, tmp_path):
    assert (
        run_cli(
            "exercise1.py",
            "--data_root",
            mnist_root,
            "--save_dir",
            tmp_path,
            "--run_name",
            "a",
            *QUIET,
            "--epochs",
            "1",
            "--hidden_size",
            "8",
        ).returncode
        == 0
    )
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    cases = {
        "missing.json": (None, "does not exist"),
        "text.json": ("not json", "damaged"),
        "list.json": ("[1, 2]", "not a lab1 config.json"),
        "bert.json": (json.dumps({"architectures": ["Bert"], "model_type": "bert"}), "not a lab1 config.json"),
        "bs0.json": (json.dumps({**saved, "data": {**saved["data"], "batch_size": 0}}), "batch_size = 0"),
        "kd.json": (json.dumps({**saved, "kind": "exercise2"}), "exercise2.py"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        before = sorted(p.name for p in tmp_path.iterdir())
        p = run_cli("exercise1.py", "--config", tmp_path / name, "--save_dir", tmp_path / "out")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (name, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, (name, p.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    p = run_cli("exercise1.py", "--resume", tmp_path / "a", "--config", tmp_path / "a" / "config.json")
    assert p.returncode == 2 and "only --epochs" in p.stderr


def test_exercise2_config_of_a_distillation_run(mnist_root, tmp_path):
    kd = ["--dataset", "mnist", "--data_root", mnist_root, "--save_dir", tmp_path, "--epochs", "1", *QUIET[:2]]
    kd += ["--teacher", "FlexibleMLP", "--t_hidden_sizes", "16", "--student", "FlexibleMLP", "--s_hidden_sizes", "8"]
    assert run_cli("exercise2.py", *kd, "--run_name", "a", "--temperature", "2").returncode == 0
    p = run_cli("exercise2.py", "--config", tmp_path / "a" / "config.json", "--run_name", "b", "--alpha", "0.7")
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in "ab")
    assert b["distill"]["temperature"] == 2 and b["distill"]["alpha"] == 0.7
    assert (b["teacher"], b["student"], b["data"]) == (a["teacher"], a["student"], a["data"])


def test_config_of_a_study_starts_the_same_study(mnist_root, tmp_path):
    argv = ["--data_root", mnist_root, "--study", "mlp_depth", "--depths", "1", "--seeds", "0", "--epochs", "1"]
    assert run_cli("exercise1.py", *argv, "--hidden_size", "8", "--save_dir", tmp_path / "a", *QUIET).returncode == 0
    p = run_cli("exercise1.py", "--config", tmp_path / "a" / "mlp_depth" / "config.json", "--save_dir", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((tmp_path / r / "mlp_depth" / "config.json").read_text()) for r in "ab")
    a["base"]["output"].pop("save_dir"), b["base"]["output"].pop("save_dir")
    assert a == b
