"""The sweep files, run as `wandb agent` runs a trial (wandb_agent.py _command_run): its environment
(WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_PROJECT, WANDB_SWEEP_PARAM_PATH and the trial's config file there) and the
command line that wandb's sweep utilities build from the file's `command:`, each process read back from its
offline .wandb file. The files are pointed at the tests' tiny data the way their comments say (data_root), with
short training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
yaml = pytest.importorskip("yaml")
from wandb.sdk.launch.sweeps import utils as sweep_utils  # noqa: E402
from wandb.sdk.lib import config_util  # noqa: E402
from wandb_reader import read_offline_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trial(sweep, tmp_path, run_id, pick=None, **overrides):
    """Start one trial of sweeps/<sweep> as the agent would (the grid's first values, or `pick`'s), with
    `overrides` in its parameters; returns (process, parameters, its W&B run read back)."""
    spec = yaml.safe_load((ROOT / "sweeps" / sweep).read_text())
    params = {k: v["value"] if "value" in v else v["values"][0] for k, v in spec["parameters"].items()}
    params.update({**(pick or {}), **overrides})
    args = {k: {"value": v} for k, v in params.items()}
    param_path = tmp_path / "wandb" / "sweep-sweep456" / f"config-{run_id}.yaml"
    config_util.save_config_file_from_dict(str(param_path), args)
    variables = sweep_utils.create_sweep_command_args({"args": args})
    variables.update(env=["/usr/bin/env"], program=[str(ROOT / spec["program"])])
    command = []
    for c in sweep_utils.create_sweep_command(list(spec["command"])):
        c = sys.executable if c == "python" else str(c)  # the agent's `python`, as this interpreter
        command += variables.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_SWEEP_ID="sweep456",
        WANDB_RUN_ID=run_id,
        WANDB_PROJECT=spec["project"],
        WANDB_SWEEP_PARAM_PATH=str(param_path),
        WANDB_SILENT="true",
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
    )
    p = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    (folder,) = [r for r in tmp_path.rglob("offline-run-*") if r.name.endswith(f"-{run_id}")]  # one run a trial
    w = read_offline_run(folder)
    assert w["id"] == run_id and w["sweep_id"] == "sweep456" and w["project"] == spec["project"]
    assert spec["metric"]["name"] in w["summary"]
    for k, v in params.items():  # a swept parameter and the run's setting are one key, holding the value given
        assert w["config"][k] == v, k
    return p, params, w


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_mlp_depth_trial(mnist_root, tmp_path):
    p, params, w = trial(
        "mlp_depth.yaml", tmp_path, "t1", {"residual": True}, data_root=str(mnist_root), epochs=2, wandb="offline"
    )
    run = tmp_path / p.stdout.strip().splitlines()[-1]  # relative to where the agent runs
    c = w["config"]
    assert (c["model"], c["depth"], c["residual"], c["norm"]) == ("FlexibleMLP", 2, True, "none")
    assert c["activation"] == "relu"  # unswept settings stay visible beside the swept ones
    best = max(metrics(run), key=lambda r: r["val_acc"])
    assert w["summary"]["val/acc"] == best["val_acc"]  # the sweep's metric: the best epoch's
    assert w["summary"]["test/acc"] == json.loads((run / "summary.json").read_text())["test_acc"]


def test_cnn_depth_trial_on_an_image_folder(folder_root, tmp_path):
    p, params, w = trial(
        "cnn_depth.yaml", tmp_path, "t1", data_root=str(folder_root), epochs=1, subset=30, wandb="offline"
    )
    assert params["dataset"] == "folder"  # the README's layout: CIFAR-10 as an image folder
    c = w["config"]
    assert (c["model"], c["norm"], c["optimizer"], c["scheduler"], c["dataset"]) == (
        "plain20",
        "batch",
        "sgd",
        "step",
        "folder",
    )
    assert "width" in c and "layers" in c  # unswept settings stay visible beside the swept ones


def test_distill_grid_trials_share_teacher_and_baseline(folder_root, tmp_path):
    tiny = {"data_root": str(folder_root), "epochs": 1, "wandb": "offline", "t_width": 8, "t_layers": 1}
    seen = []
    for i, t in enumerate((1, 2)):
        p, params, w = trial("distill_grid.yaml", tmp_path, f"t{i}", {"temperature": t}, **tiny)
        assert ("== teacher (shared" in p.stdout) == (i == 0)
        assert ("== student_baseline (shared" in p.stdout) == (i == 0)  # trained once for all trials
        c = w["config"]
        assert (c["kind"], c["temperature"], c["alpha"], c["student"], c["teacher"]) == (
            "exercise2",
            t,
            0.1,
            "resnet20",
            "FlexibleCNN",
        )
        assert c["teacher_ckpt"] == str(Path(params["teacher_dir"]) / "teacher.pth") and "phase" not in c
        assert w["summary"]["student_distill/test/acc"] and "student_baseline/test/acc" in w["summary"]
        run = tmp_path / p.stdout.strip().splitlines()[-1]
        best = max(metrics(run / "student_distill"), key=lambda r: r["val_acc"])
        assert w["summary"]["student_distill/val/acc"] == best["val_acc"]
        seen.append(json.loads((run / "summary.json").read_text())["student_baseline"]["test_acc"])
    assert seen[0] == seen[1]  # the one baseline
