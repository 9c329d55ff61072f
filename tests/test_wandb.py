"""wandb_log: mode choice from wandb's own credentials, offline runs read back (best-epoch summary, epoch and step
axes, tables, model artifacts, WANDB_DIR/ENTITY/TAGS), the sweep-agent shared run with its parameter file, and
failures that only warn. Offline only: HOME, NETRC and WANDB_* point into tmp_path."""

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
from wandb.sdk import wandb_setup  # noqa: E402
from wandb.sdk.lib import wbauth  # noqa: E402
from wandb_reader import read_offline_run, table  # noqa: E402

from wandb_log import WandbLogger, finish_process, resolve_mode, sync_command  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "k" * 40  # wandb accepts keys of 40+ word characters
PHASES = ("teacher", "student_baseline", "student_distill")


@pytest.fixture
def wb(tmp_path, monkeypatch):
    """A clean, offline wandb: no WANDB_* from outside, home/netrc/config/data under tmp_path, cwd tmp_path.

    wandb reads its environment once per process (its setup singleton), so it is torn down around each test.
    """
    for k in [k for k in os.environ if k.startswith("WANDB_") or k == "NETRC"]:
        monkeypatch.delenv(k)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var, sub in [
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.chdir(tmp_path)
    wandb.teardown()
    yield tmp_path
    finish_process()
    wandb.teardown()


def reload_env():
    wandb.teardown()  # the next wandb call reads the environment again


def warning_lines(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("warning: ") for line in lines), err
    assert "Traceback" not in err
    return lines


def png(path):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


# ---- resolve_mode ----


def test_explicit_modes_stand_and_auto_without_credentials_is_offline(wb, capsys):
    assert [resolve_mode(m) for m in ("online", "offline", "disabled")] == ["online", "offline", "disabled"]
    assert resolve_mode("auto") == "offline"
    with pytest.raises(ValueError):
        resolve_mode("sometimes")
    assert warning_lines(capsys.readouterr().err) == []


def test_api_key_in_env_means_online_and_wandb_mode_is_honoured(wb, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    reload_env()
    assert resolve_mode("auto") == "online"
    for env, mode in [("offline", "offline"), ("disabled", "disabled"), ("dryrun", "offline"), ("online", "online")]:
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_mode("auto") == mode
    assert resolve_mode("offline") == "offline"  # an explicit --wandb stands, as wandb.init(mode=) beats WANDB_MODE
    assert KEY not in capsys.readouterr().err


@pytest.mark.parametrize("base_url", [None, "https://wandb.example.org"])
def test_netrc_written_by_wandb_login_means_online(wb, monkeypatch, base_url):
    """`wandb login` (wbauth.write_netrc_auth) keys the entry by the configured server's host; in 0.31 the
    default is api.forge.coreweave.com, not api.wandb.ai, which the old netrc scan looked for."""
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    reload_env()
    host = wandb_setup.singleton().settings.base_url
    wbauth.write_netrc_auth(host=host, api_key=KEY)
    netrc = (wb / "home" / ".netrc").read_text()
    assert f"machine {host.split('//')[1]}" in netrc and "api.wandb.ai" not in netrc
    assert resolve_mode("auto") == "online"
    if base_url:  # the same netrc does not log the user in to another server
        monkeypatch.delenv("WANDB_BASE_URL")
        reload_env()
        assert resolve_mode("auto") == "offline"


def test_legacy_api_wandb_ai_netrc_entry_still_counts(wb):
    (wb / "home" / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    assert resolve_mode("auto") == "online"


def test_netrc_that_is_a_folder_means_offline_with_one_warning(wb, monkeypatch, capsys):
    monkeypatch.setenv("NETRC", str(wb))
    reload_env()
    assert resolve_mode("auto") == "offline"
    assert len(warning_lines(capsys.readouterr().err)) == 1


def test_the_private_lookup_is_used_only_where_tested_and_offered():
    """Inside PRIVATE_LOOKUP_TESTED the installed wandb must still offer wbauth.authenticate_session as lab1 calls
    it: this fails as soon as a release in the range drops or changes it (then narrow the range)."""
    import inspect

    import wandb_log

    if not wandb_log.private_lookup_tested():
        pytest.skip(f"wandb {wandb.__version__} is outside the tested range: the documented lookup is used")
    params = inspect.signature(wbauth.authenticate_session).parameters
    assert {"host", "source", "prompt", "verify", "update_session"} <= set(params)


def test_outside_the_tested_range_the_documented_lookup_decides(wb, monkeypatch):
    """Another wandb release: WANDB_API_KEY, or a netrc entry for WANDB_BASE_URL's host (api.wandb.ai by default)."""
    import wandb_log

    monkeypatch.setattr(wandb_log, "PRIVATE_LOOKUP_TESTED", ((0, 0), (0, 0)))
    assert not wandb_log.private_lookup_tested()
    assert resolve_mode("auto") == "offline"
    (wb / "home" / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    (wb / "home" / ".netrc").chmod(0o600)  # as `wandb login` leaves it (Python's netrc refuses a shared one)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode("auto") == "offline"  # that entry is for another server
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert resolve_mode("auto") == "online"


# ---- offline runs ----


def test_offline_run_keeps_config_history_best_epoch_summary_steps_images_and_table(wb, capsys):
    run_dir = wb / "runs" / "mlp_a"
    lg = WandbLogger(
        "offline", "lab1-test", "mlp_a", {"lr": 0.1, "model": "mlp"}, group="g", job_type="train", dir=run_dir
    )
    assert lg.id and lg.offline_dir.parent == (run_dir / "wandb").resolve()
    rows = [{"epoch": e, "train/loss": 1 / e, "val/acc": a, "lr": 0.1} for e, a in ((1, 0.1), (2, 0.3), (3, 0.2))]
    for i, row in enumerate(rows):
        for step in (1, 2):
            lg.log_step(i * 2 + step, {"loss": 2.0 - i, "lr": 0.1})
        lg.log_epoch(row, max(rows[: i + 1], key=lambda r: r["val/acc"]))
    lg.log_images([png(run_dir / "curves.png"), run_dir / "missing.png"])
    lg.log_table("results", ["mode", "acc"], [["linear", 0.5], ["finetune", 0.7]])
    lg.finish({"test/acc": 0.9, "best_epoch": 2})
    lg.log({"late": 1})  # after finish: a no-op
    run = read_offline_run(lg.offline_dir)
    assert (run["id"], run["name"], run["group"], run["job_type"]) == (lg.id, "mlp_a", "g", "train")
    assert run["project"] == "lab1-test" and run["exit_code"] == 0
    assert run["config"] == {"lr": 0.1, "model": "mlp"}
    assert {"train/loss", "val/acc", "epoch", "batch/loss", "batch/lr", "global_step", "curves"} <= set(
        run["history_keys"]
    )
    assert "late" not in run["history_keys"]
    epochs = [(row["epoch"], row["val/acc"]) for row in run["history"] if "val/acc" in row]
    assert epochs == [(1, 0.1), (2, 0.3), (3, 0.2)]
    assert [row["global_step"] for row in run["history"] if "batch/loss" in row] == [1, 2, 3, 4, 5, 6]
    s = run["summary"]
    assert (s["val/acc"], s["train/loss"], s["epoch"]) == (0.3, 0.5, 3)  # the best epoch's metrics, the last epoch
    assert s["test/acc"] == 0.9 and s["best_epoch"] == 2
    assert run["metrics"]["val/*"] == run["metrics"]["train/*"] == {"step_metric": "epoch", "summary": ["none"]}
    assert run["metrics"]["batch/*"]["step_metric"] == "global_step"
    assert s["curves"]["_type"] == "image-file"
    assert (lg.offline_dir / "files" / s["curves"]["path"]).is_file()
    assert table(run, "results") == {"columns": ["mode", "acc"], "data": [["linear", 0.5], ["finetune", 0.7]]}
    assert warning_lines(capsys.readouterr().err) == []


def test_step_points_at_each_epochs_last_step_and_at_most_one_an_interval_between(wb):
    import torch

    from tracking import StepPoints

    lg = WandbLogger("offline", "p", "r", {}, dir=wb / "r")
    slow, every = StepPoints(lg, interval=3600.0), StepPoints(lg, interval=0.0)
    for epoch in (0, 1):
        for step in (25, 50, 60):  # engine.fit calls it every log_every steps and at the last (60)
            slow(epoch, step, 60, torch.tensor(1.5), 0.1)
    every(2, 25, 60, torch.tensor(0.5), 0.01)
    lg.finish()
    points = [(r["global_step"], r["batch/loss"], r["batch/lr"]) for r in read_offline_run(lg.offline_dir)["history"]]
    assert points == [(25, 1.5, 0.1), (60, 1.5, 0.1), (120, 1.5, 0.1), (145, 0.5, 0.01)]


def test_wandb_dir_entity_and_tags_from_the_environment_are_honoured(wb, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(wb / "elsewhere"))
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    monkeypatch.setenv("WANDB_TAGS", "baseline,cpu")
    reload_env()
    lg = WandbLogger("offline", "p", "r", {}, dir=wb / "r")
    lg.finish()
    assert lg.offline_dir.parent == (wb / "elsewhere" / "wandb").resolve() and not (wb / "r" / "wandb").exists()
    run = read_offline_run(lg.offline_dir)
    assert run["entity"] == "my-team" and run["tags"] == ["baseline", "cpu"]
    assert warning_lines(capsys.readouterr().err) == []


def test_model_artifact_is_logged_and_an_input_is_only_named_offline(wb, capsys):
    (wb / "best.pt").write_bytes(b"weights")
    lg = WandbLogger("offline", "p", "r", {}, dir=wb / "r", inputs=["p/teacher-abc:best"])
    lg.log_model(wb / "best.pt", "train-xyz", ["best", "latest"], {"epoch": 2})
    (wb / "best.pt").write_bytes(b"changed later")  # wandb staged its own copy
    lg.finish()
    run = read_offline_run(lg.offline_dir)
    md5 = base64.b64encode(hashlib.md5(b"weights").digest()).decode()
    assert run["artifacts"] == [
        {
            "name": "train-xyz",
            "type": "model",
            "aliases": ["best", "latest"],
            "metadata": {"epoch": 2},
            "files": {"best.pt": md5},
        }
    ]
    assert run["used"] == []  # wandb declares inputs online only (use_artifact resolves the name on the server)
    assert warning_lines(capsys.readouterr().err) == []


def test_outside_an_agent_each_logger_is_its_own_run_with_plain_keys(wb, capsys):
    loggers = []
    for phase in PHASES[:2]:
        lg = WandbLogger("offline", "p", f"r-{phase}", {}, group="r", job_type=phase, dir=wb / "r", prefix=f"{phase}/")
        lg.log_epoch({"epoch": 1, "train/loss": 0.5}, {"epoch": 1, "train/loss": 0.5})
        lg.finish({"test/acc": 0.8})
        loggers.append(lg)
    assert loggers[0].id != loggers[1].id and warning_lines(capsys.readouterr().err) == []
    runs = [read_offline_run(lg.offline_dir) for lg in loggers]
    assert [r["job_type"] for r in runs] == list(PHASES[:2])
    assert runs[1]["summary"] == {"epoch": 1, "train/loss": 0.5, "test/acc": 0.8}  # the same keys as exercise1's


def test_resumed_run_writes_a_second_folder_and_one_command_syncs_both(wb, capsys):
    first = WandbLogger("offline", "p", "r", {}, dir=wb / "r")
    first.log({"loss": 1.0}, step=1)
    first.finish()
    again = WandbLogger("offline", "p", "r", {}, dir=wb / "r", resume_id=first.id)
    again.log({"loss": 0.5}, step=2)
    again.finish({"test_acc": 0.9})
    assert again.id == first.id and again.offline_dir != first.offline_dir
    assert warning_lines(capsys.readouterr().err) == []
    command = sync_command([again.offline_dir])  # the resumed process knows only its own folder
    assert command == "wandb sync r/wandb"
    dry = subprocess.run(
        command.replace("wandb sync", f"{sys.executable} -m wandb sync --dry-run", 1),
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


# ---- the sweep agent ----


def agent_env(monkeypatch, folder, params, run_id="trial123"):
    """The environment `wandb agent` gives a trial (wandb_agent.py _command_run): the sweep and run ids, and the
    trial's parameters in a config file (WANDB_SWEEP_PARAM_PATH) that wandb.init merges into the run's config."""
    from wandb.sdk.lib import config_util

    path = folder / "wandb" / "sweep-sweep456" / f"config-{run_id}.yaml"
    config_util.save_config_file_from_dict(str(path), {k: {"value": v} for k, v in params.items()})
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep456")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(path))
    reload_env()


def test_under_an_agent_all_loggers_share_one_run_with_prefixed_keys(wb, monkeypatch, capsys):
    agent_env(monkeypatch, wb, {"temperature": 4, "model": "FlexibleMLP"})
    loggers = []
    for i, phase in enumerate(PHASES):  # as exercise2 does: one logger per phase, opened and finished in turn
        config = {"kind": "exercise2", "phase": phase, "temperature": 4.0, "model": "FlexibleMLP", "norm": "none"}
        if phase == "student_distill":
            config["teacher_artifact"] = "p/teacher-x:best"
        kw = {"group": "r", "job_type": phase, "dir": wb / "r", "prefix": f"{phase}/"}
        lg = WandbLogger("offline", "p", f"r-{phase}", config, **kw)
        for epoch in (1, 2):
            row = {"epoch": epoch, "train/loss": i + epoch / 10}
            lg.log_epoch(row, row)
        lg.finish({"test/acc": [0.7, 0.8, 0.9][i]})
        loggers.append(lg)
    finish_process()
    finish_process()  # nothing open: a no-op
    assert warning_lines(capsys.readouterr().err) == []
    folders = list((wb / "r" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and {lg.id for lg in loggers} == {"trial123"}
    run = read_offline_run(folders[0])
    assert run["id"] == "trial123" and run["group"] == "" and run["exit_code"] == 0  # the sweep groups its trials
    # The swept parameters and the run's own settings are one key each; unswept ones stay; no phase name.
    assert run["config"] == {
        "kind": "exercise2",
        "temperature": 4,
        "model": "FlexibleMLP",
        "norm": "none",
        "teacher_artifact": "p/teacher-x:best",
    }
    assert {k: v for k, v in run["summary"].items() if k.endswith("test/acc")} == {
        "teacher/test/acc": 0.7,
        "student_baseline/test/acc": 0.8,
        "student_distill/test/acc": 0.9,
    }
    for phase in PHASES:  # every phase's epochs 1, 2 kept: no phase's step counter fights another's
        assert [row[f"{phase}/epoch"] for row in run["history"] if f"{phase}/train/loss" in row] == [1, 2]
        assert run["metrics"][f"{phase}/train/*"]["step_metric"] == f"{phase}/epoch"
    assert sync_command([lg.offline_dir for lg in loggers]) == "wandb sync r/wandb"


def test_finish_process_with_nothing_open_is_a_no_op(wb, capsys):
    finish_process()
    assert capsys.readouterr().err == ""


# ---- failures only warn ----


def test_failing_init_warns_once_hides_keys_and_makes_the_logger_a_no_op(wb, monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError(f"server said no to key {KEY}\nsecond line")

    monkeypatch.setattr(wandb, "init", boom)
    lg = WandbLogger("offline", "p", "r", {}, dir=wb / "r")
    lg.log({"a": 1}, step=1)
    lg.log_images([png(wb / "x.png")])
    lg.log_table("t", ["a"], [[1]])
    lg.finish({"a": 1})
    assert lg.id is None and lg.offline_dir is None
    err = capsys.readouterr().err
    assert len(warning_lines(err)) == 1 and KEY not in err and "RuntimeError" in err


def test_failing_call_warns_once_then_the_logger_is_off(wb, capsys):
    lg = WandbLogger("offline", "p", "r", {}, dir=wb / "r")
    run = lg.run

    def broken(*a, **k):
        raise OSError("disk full")

    lg.run.log = broken
    lg.log({"a": 1}, step=1)
    lg.log({"a": 2}, step=2)
    lg.finish({"a": 1})
    assert len(warning_lines(capsys.readouterr().err)) == 1
    run.finish()


def test_disabled_never_imports_wandb():
    code = (
        "import sys, wandb_log; lg = wandb_log.WandbLogger('disabled', 'p', 'n', {}); lg.log({'a': 1}, step=1); "
        "lg.finish({'a': 1}); wandb_log.finish_process(); print(lg.id, 'wandb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["None", "False"], out.stderr
