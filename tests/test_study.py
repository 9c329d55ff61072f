"""Studies, seeds, confusion matrices, Telegram notifications and plots.py, through the CLI."""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import run_cli

from stats import mean_std

STUDY = [
    "--study",
    "mlp_depth",
    "--depths",
    "1",
    "3",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "1",
    "--hidden_size",
    "32",
    "--wandb",
    "disabled",
]


def test_mean_std_on_known_values():
    assert mean_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx((5.0, 2.138089935))  # sample std (n - 1)
    assert mean_std([0.9]) == (0.9, 0.0)


def test_tiny_study_leaves_every_file_and_continues(mnist_root, tmp_path):
    p = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, *STUDY)
    assert p.returncode == 0, p.stderr
    study = tmp_path / "mlp_depth"
    assert Path(p.stdout.strip().splitlines()[-1]) == study
    for f in ("summary.json", "results.md", "comparison.png", "grads.png", "config.json", "command.txt"):
        assert (study / f).stat().st_size > 0, f
    children = sorted(d.name for d in study.iterdir() if d.is_dir())
    assert children == [
        "plain1_seed0",
        "plain1_seed1",
        "plain3_seed0",
        "plain3_seed1",
        "residual1_seed0",
        "residual1_seed1",
        "residual3_seed0",
        "residual3_seed1",
    ]
    for c in children:
        for f in ("summary.json", "metrics.jsonl", "best.pt", "curves.png", "confusion.png"):
            assert (study / c / f).exists(), (c, f)
    s = json.loads((study / "summary.json").read_text())
    rows = {(r["model"], r["depth"]): r for r in s["configurations"]}
    assert set(rows) == {("plain", 1), ("plain", 3), ("residual", 1), ("residual", 3)}
    for (kind, depth), r in rows.items():
        accs = [
            json.loads((study / f"{kind}{depth}_seed{seed}" / "summary.json").read_text())["test_acc"]
            for seed in (0, 1)
        ]
        assert r["test_acc_mean"] == pytest.approx(mean_std(accs)[0])
        assert r["test_acc_std"] == pytest.approx(mean_std(accs)[1])
    assert "| Model | Depth | Params | Test acc mean ± std" in (study / "results.md").read_text()

    # An interrupted study: one child lost its summary (killed mid-run), one was never started.
    (study / "residual3_seed1" / "summary.json").unlink()
    import shutil

    shutil.rmtree(study / "residual3_seed0")
    again = run_cli("exercise1.py", "--data_root", mnist_root, "--save_dir", tmp_path, *STUDY)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished earlier, skipped") == 6
    assert "residual3_seed1: resuming at the end of epoch 1" in again.stdout
    assert (study / "residual3_seed0" / "summary.json").exists()

    other = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        *STUDY[:-2],
        "--lr",
        "0.1",
        "--wandb",
        "disabled",
    )
    assert other.returncode == 2 and "another study" in other.stderr


def test_seeds_without_study(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "s",
        "--seeds",
        "3",
        "4",
        "--epochs",
        "1",
        "--depth",
        "2",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "s" / "summary.json").read_text())["configurations"]
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    assert json.loads((tmp_path / "s" / "seed4" / "config.json").read_text())["train"]["seed"] == 4
    # --epochs raised for a study none of whose children has finished (here: their summaries removed): every child
    # trains on to the new length, and the study's and the children's config.json say so.
    for f in [tmp_path / "s" / "summary.json", *(tmp_path / "s").glob("seed*/summary.json")]:
        f.unlink()
    p = run_cli("exercise1.py", "--resume", tmp_path / "s", "--epochs", "2")
    assert p.returncode == 0, p.stderr
    for f in ("config.json", "seed3/config.json", "seed4/config.json"):
        c = json.loads((tmp_path / "s" / f).read_text())
        assert (c["base"] if "base" in c else c)["train"]["epochs"] == 2, f
    assert [m["epoch"] for m in map(json.loads, (tmp_path / "s" / "seed3" / "metrics.jsonl").open())] == [1, 2]


def test_confusion_matrix_and_per_class_accuracy(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--epochs",
        "1",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    cm = s["confusion"]
    assert len(cm) == 10 and sum(map(sum, cm)) == 100  # every test image counted once
    assert sum(cm[i][i] for i in range(10)) / 100 == pytest.approx(s["test_acc"])
    assert len(s["per_class_acc"]) == 10 and (tmp_path / "r" / "confusion.png").exists()


class _Recorder(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        _Recorder.received.append((self.path, urllib.parse.parse_qs(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args):
        pass


def test_telegram_message_arrives(mnist_root, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "TELEGRAM_BOT_TOKEN": "T0K",
            "TELEGRAM_CHAT_ID": "42",
            "TELEGRAM_API_URL": f"http://127.0.0.1:{server.server_port}",
        }
        p = run_cli(
            "exercise1.py",
            "--data_root",
            mnist_root,
            "--save_dir",
            tmp_path,
            "--run_name",
            "tg",
            "--epochs",
            "1",
            "--wandb",
            "disabled",
            "--notify",
            "telegram",
            env=env,
        )
        assert p.returncode == 0, p.stderr
    finally:
        server.shutdown()
    assert len(_Recorder.received) == 1
    path, form = _Recorder.received[0]
    assert path == "/botT0K/sendMessage" and form["chat_id"] == ["42"]
    acc = json.loads((tmp_path / "tg" / "summary.json").read_text())["test_acc"]
    assert form["text"][0].startswith("lab1 tg finished: test acc") and f"{acc:.4f}" in form["text"][0]


def test_telegram_dead_server_only_warns(mnist_root, tmp_path):
    env = {"TELEGRAM_BOT_TOKEN": "T", "TELEGRAM_CHAT_ID": "1", "TELEGRAM_API_URL": "http://127.0.0.1:9"}
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--epochs",
        "1",
        "--wandb",
        "disabled",
        "--notify",
        "telegram",
        env=env,
    )
    assert p.returncode == 0 and "warning: Telegram message not sent" in p.stderr


def test_plots_compare_and_table(mnist_root, tmp_path):
    for name in ("a", "b"):
        assert (
            run_cli(
                "exercise1.py",
                "--data_root",
                mnist_root,
                "--save_dir",
                tmp_path,
                "--run_name",
                name,
                "--epochs",
                "2",
                "--wandb",
                "disabled",
            ).returncode
            == 0
        )
    out = tmp_path / "cmp.png"
    p = run_cli("plots.py", "compare", tmp_path / "a", tmp_path / "b", "--metric", "val_acc", "--out", out)
    assert p.returncode == 0 and out.stat().st_size > 0, p.stderr
    p = run_cli("plots.py", "table", tmp_path / "a", tmp_path / "b")
    assert p.returncode == 0 and p.stdout.count("\n") == 4 and "| a |" in p.stdout and "| b |" in p.stdout
    p = run_cli("plots.py", "table", tmp_path / "missing")
    assert p.returncode != 0 and "not found" in p.stderr


@pytest.mark.parametrize(
    "sweep", sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml")), ids=lambda p: p.name
)
def test_sweep_files_name_real_flags(sweep):
    """Every sweep parameter must be a flag its program accepts (W&B passes them as --name=value)."""
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(sweep.read_text())
    program = spec["program"].removesuffix(".py")
    parser = __import__(program).get_args_parser()
    dests = {a.dest for a in parser._actions}
    assert set(spec["parameters"]) <= dests
    assert "${args_no_boolean_flags}" in spec["command"]


def test_offline_study_prints_one_upload_command(mnist_root, tmp_path):
    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        *STUDY[:-2],
        "--wandb",
        "offline",
        "--depths",
        "1",
        "--seeds",
        "0",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if "wandb sync" in line]
    assert len(lines) == 1 and "mlp_depth/*/wandb" in lines[0], lines
