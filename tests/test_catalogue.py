"""The bad-input catalogue: every case is one line on stderr, exit code 2, no traceback, and no folder made or
changed. In-process (run_cli), so the whole table takes seconds; the cases are classes of input, each tried
through the real entry point.
"""

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, write_cifar, write_mnist

QUIET = ["--wandb", "disabled", "--epochs", "1"]
MARKER = Path("/tmp/lab1_catalogue_pwned")


class Evil:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Data sets, trained runs and crafted files the cases point at."""
    base = tmp_path_factory.mktemp("catalogue")
    f = {"mnist": write_mnist(base / "mnist"), "cifar": write_cifar(base / "cifar"), "base": base}
    fashion = write_mnist(base / "fashion", folder="FashionMNIST")
    f["fashion"] = fashion
    for name, argv in (
        ("mlp", ["--hidden_size", "16", "--depth", "1"]),
        ("cnn", ["--model", "FlexibleCNN", "--layers", "1", "--width", "4", "--dataset", "mnist"]),
    ):
        r = run_cli(
            "exercise1.py", "--data_root", f["mnist"], "--save_dir", base / "runs", "--run_name", name, *argv, *QUIET
        )
        assert r.returncode == 0, r.stderr
    r = run_cli(
        "exercise1.py",
        "--data_root",
        fashion,
        "--dataset",
        "fashion-mnist",
        "--save_dir",
        base / "runs",
        "--run_name",
        "fashion",
        "--hidden_size",
        "16",
        "--depth",
        "1",
        *QUIET,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "exercise2.py",
        "--dataset",
        "mnist",
        "--data_root",
        f["mnist"],
        "--save_dir",
        base / "runs",
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
        *QUIET,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "exercise2.py",
        "--dataset",
        "mnist",
        "--data_root",
        f["mnist"],
        "--save_dir",
        base / "runs",
        "--run_name",
        "kdc",
        "--teacher",
        "FlexibleMLP",
        "--t_hidden_sizes",
        "16",
        "--student",
        "FlexibleMLP",
        "--s_hidden_sizes",
        "8",
        "--cache_teacher",
        *QUIET,
    )
    assert r.returncode == 0, r.stderr
    runs = base / "runs"
    cache = torch.load(runs / "kdc" / "teacher_logits.pt", weights_only=True)
    torch.save({**cache, "logits": cache["logits"] * float("nan")}, base / "logits_nan.pt")
    torch.save({**cache, "logits": cache["logits"][:5]}, base / "logits_short.pt")
    f["crafted"] = base / "crafted.pt"
    torch.save({"format": "lab1-checkpoint-v1", "model": Evil()}, f["crafted"])
    with open(base / "legacy.pt", "wb") as fh:
        pickle.dump({"format": "lab1-checkpoint-v1", "x": Evil()}, fh, protocol=2)
    good = torch.load(runs / "mlp" / "best.pt", weights_only=True)
    torch.save({"format": "lab1-checkpoint-v1", "model": good["model"]}, base / "no_arch.pt")
    torch.save({**good, "model": {k: v[..., :1] for k, v in good["model"].items()}}, base / "bad_shapes.pt")
    torch.save({**good, "model": {k: v * float("nan") for k, v in good["model"].items()}}, base / "nan.pt")
    cnn = torch.load(runs / "cnn" / "best.pt", weights_only=True)
    torch.save(
        {**cnn, "model": {k: v * float("nan") if v.is_floating_point() else v for k, v in cnn["model"].items()}},
        base / "nan_cnn.pt",
    )
    (base / "garbage.pt").write_bytes(b"\x00garbage" * 10)
    torch.save({"key": {}, "logits": torch.zeros(3, 10)}, base / "logits_other.pt")
    # A run folder whose last.pt is crafted: --resume must refuse it without running it.
    crafted_run = runs / "crafted_run"
    crafted_run.mkdir()
    (crafted_run / "config.json").write_text((runs / "mlp" / "config.json").read_text())
    (crafted_run / ".lock").touch()  # as in every run folder lab1 makes
    (crafted_run / "last.pt").write_bytes(f["crafted"].read_bytes())
    for name, text in (("lying_run", None), ("list_run", "[1, 2]")):  # config.json that lies about what it holds
        d = runs / name
        d.mkdir()
        (d / ".lock").touch()
        cfg = json.loads((runs / "mlp" / "config.json").read_text())
        cfg["train"]["epochs"] = "ten"
        (d / "config.json").write_text(text or json.dumps(cfg))
    for name in ("edited_run", "no_last_run"):  # a run folder edited by hand, one whose last.pt was deleted
        shutil.copytree(runs / "mlp", runs / name)
    cfg = json.loads((runs / "edited_run" / "config.json").read_text())
    cfg["model"]["dropout"] = 0.5
    (runs / "edited_run" / "config.json").write_text(json.dumps(cfg))
    (runs / "no_last_run" / "last.pt").unlink()
    shutil.copytree(runs / "mlp", runs / "lying_last_run")  # a last.pt whose config holds a tensor, not settings
    last = torch.load(runs / "mlp" / "last.pt", weights_only=True)
    torch.save({**last, "config": {**last["config"], "train": torch.zeros(2)}}, runs / "lying_last_run" / "last.pt")
    # Run folders damaged in the ways an edit, a crash or another machine leaves them (each refused before any write).
    for name, edit in (
        ("progress_run", lambda ck: {**ck, "history": "notalist"}),
        ("nan_last_run", lambda ck: {**ck, "model": {k: v * float("nan") for k, v in ck["model"].items()}}),
        (
            "gpu_run",
            lambda ck: {**ck, "config": {**ck["config"], "train": {**ck["config"]["train"], "device": "cuda"}}},
        ),
    ):
        shutil.copytree(runs / "mlp", runs / name)
        torch.save(edit(last), runs / name / "last.pt")
        (runs / name / "summary.json").unlink()
    cfg = json.loads((runs / "gpu_run" / "config.json").read_text())
    cfg["train"]["device"] = "cuda"
    (runs / "gpu_run" / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(runs / "no_last_run", runs / "bs0_run")
    (runs / "bs0_run" / "summary.json").unlink()
    cfg = json.loads((runs / "bs0_run" / "config.json").read_text())
    cfg["data"]["batch_size"] = 0
    (runs / "bs0_run" / "config.json").write_text(json.dumps(cfg))
    (runs / "docs").mkdir()  # not a run: --overwrite must leave it alone
    (runs / "docs" / "thesis.tex").write_text("mine")
    r = run_cli(
        "exercise1.py",
        "--data_root",
        f["mnist"],
        "--save_dir",
        runs,
        "--run_name",
        "seeds",
        "--seeds",
        "0",
        "1",
        "--hidden_size",
        "8",
        "--depth",
        "1",
        *QUIET,
    )
    assert r.returncode == 0, r.stderr
    for name, edit in (("seeds_ab", lambda c: {**c, "seeds": "ab"}), ("seeds_none", lambda c: {**c, "seeds": []})):
        shutil.copytree(runs / "seeds", runs / name)  # a study config.json its flags would not take
        plan = json.loads((runs / "seeds" / "config.json").read_text())
        (runs / name / "config.json").write_text(json.dumps(edit(plan)))
    shutil.copytree(runs / "seeds", runs / "seeds_replaced")  # a child that is not the study's any more
    child = json.loads((runs / "seeds" / "seed0" / "config.json").read_text())
    child["train"]["lr"] = 0.01
    (runs / "seeds_replaced" / "seed0" / "config.json").write_text(json.dumps(child))
    torch.save({**cache, "logits": cache["logits"][:, :3]}, base / "logits_classes.pt")
    bad_norm = torch.load(runs / "kd" / "teacher.pth", weights_only=True)
    bad_norm["arch"]["input_norm"] = ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    torch.save(bad_norm, base / "bad_norm.pt")
    # Broken data sets, one per kind of damage.
    for name, damage in (
        ("garbled", _garble),
        ("labels", _bad_label),
        ("bomb", _bomb),
        ("sizes", _test_size),
        ("constant", _constant),
    ):
        root = write_mnist(base / name)
        damage(root / "MNIST" / "raw")
        f[name] = root
    f["meta"] = write_cifar(base / "meta")
    with open(f["meta"] / "cifar-10-batches-py" / "batches.meta", "wb") as fh:
        pickle.dump({b"other": 1}, fh)
    f["evil_cifar"] = write_cifar(base / "evil_cifar")
    with open(f["evil_cifar"] / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump(Evil(), fh)
    return f


def _garble(raw):
    p = raw / "train-images-idx3-ubyte.gz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    p.write_bytes(bytes(data))


def _bomb(raw):
    """Far more bytes than the header declares (a decompression bomb in small): refused without inflating it all."""
    p = raw / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + bytes(50_000_000), compresslevel=1))


def _test_size(raw):
    """Test images of another size than the training images."""
    from conftest import write_idx

    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((100, 32, 32), dtype=np.uint8))


def _constant(raw):
    """Training images that are all one colour: nothing to learn, and a std of 0 to normalise by."""
    from conftest import write_idx

    write_idx(raw / "train-images-idx3-ubyte.gz", np.full((300, 28, 28), 7, dtype=np.uint8))


def _bad_label(raw):
    p = raw / "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(p.read_bytes()))
    data[8 + 5] = 12
    p.write_bytes(gzip.compress(bytes(data)))


M, C, B = "{mnist}", "{cifar}", "{base}"
R = "{base}/runs"
KD = [
    "exercise2.py",
    "--dataset",
    "mnist",
    "--data_root",
    M,
    "--teacher",
    "FlexibleMLP",
    "--t_hidden_sizes",
    "8",
    "--student",
    "FlexibleMLP",
    "--s_hidden_sizes",
    "4",
]
KS = KD[:5] + KD[9:]  # the student only: the teacher comes from --teacher_ckpt
FT = ["exercise2.py", "--task", "finetune", "--dataset", "mnist", "--data_root", M]
E1 = ["exercise1.py", "--data_root", M]
CASES = [
    # numbers and names
    (E1 + ["--depth", "0"], "--depth"),
    (E1 + ["--epochs", "0"], "--epochs"),
    (E1 + ["--epochs", "ten"], "--epochs"),
    (E1 + ["--layers", "2", "-1"], "--layers"),
    (E1 + ["--lr", "-1"], "--lr"),
    (E1 + ["--lr", "nan"], "--lr"),
    (E1 + ["--lr", "inf"], "--lr"),
    (E1 + ["--lr", "1e308"], "--lr"),
    (E1 + ["--weight_decay", "1e308"], "--weight_decay"),
    (E1 + ["--warmup_epochs", "1e308"], "--warmup_epochs"),
    (E1 + ["--seed", str(2**63)], "--seed"),
    (E1 + ["--seeds", "1", str(2**64)], "--seeds"),
    (E1 + ["--hidden_size", str(2**40)], "--hidden_size"),
    (E1 + ["--hidden_size", "2000000"], "GiB"),
    (E1 + ["--momentum", "2"], "--momentum"),
    (E1 + ["--val_split", "1.5"], "--val_split"),
    (E1 + ["--val_split", "-0.1"], "--val_split"),
    (E1 + ["--batch_size", "0"], "--batch_size"),
    (E1 + ["--dropout", "1.5"], "--dropout"),
    (E1 + ["--input_dropout", "2"], "--input_dropout"),
    (E1 + ["--max_norm", "-1"], "--max_norm"),
    (E1 + ["--model", "resnet9000"], "--model"),
    (E1 + ["--dataset", "imagenet"], "--dataset"),
    (E1 + ["--optimizer", "lbfgs"], "--optimizer"),
    (E1 + ["--scheduler", "linear"], "--scheduler"),
    (E1 + ["--skips", "1:2"], "--skips"),
    (E1 + ["--skips", "one:two"], "--skips"),
    (E1 + ["--depth", "2", "--skips", "3:0"], "skip 3:0"),
    (E1 + ["--norm", "group"], "--norm"),
    (E1 + ["--model", "resnet20", "--norm", "layer"], "norm layer"),
    (E1 + ["--amp", "fp16", "--device", "cpu"], "--amp fp16"),
    (E1 + ["--device", "cuda"] if not torch.cuda.is_available() else E1 + ["--device", "tpu"], "--device"),
    (E1 + ["--unknown_flag"], "unrecognized"),
    # combinations
    (E1 + ["--k_folds", "1"], "--k_folds"),
    (E1 + ["--k_folds", "3", "--study", "mlp_depth"], "--k_folds"),
    (E1 + ["--early_stopping", "2", "--val_split", "0"], "--early_stopping"),
    (E1 + ["--seeds", "1", "--seed", "2"], "--seed"),
    (E1 + ["--workers", "2"], "--workers"),
    (E1 + ["--study", "cnn_depth", "--depths", "7"], "6n+2"),
    # sizes that leave a split empty
    (E1 + ["--subset", "1"], "--subset"),
    (E1 + ["--subset", "5"], "--subset"),
    (E1 + ["--subset", "20", "--val_split", "0.99"], "--val_split"),
    (E1 + ["--subset", "100000"], "--subset"),
    (E1 + ["--k_folds", "50"], "--k_folds"),
    # names and folders
    (E1 + ["--run_name", "a/b"], "--run_name"),
    (E1 + ["--run_name", ".."], "--run_name"),
    (E1 + ["--run_name", "x" * 300], "at most"),
    (E1 + ["--save_dir", "{base}/crafted.pt/runs"], "not a writable folder"),
    # resume
    (["exercise1.py", "--resume", "{base}/nowhere"], "does not exist"),
    (["exercise1.py", "--resume", B], "no lab1 run folder"),
    (["exercise1.py", "--resume", f"{R}/mlp/best.pt"], "weights only"),
    (["exercise1.py", "--resume", f"{R}/mlp", "--lr", "0.1"], "only --epochs"),
    (["exercise1.py", "--resume", f"{R}/mlp", "--epochs", "0"], "--epochs"),
    (["exercise1.py", "--resume", f"{R}/kd/teacher.pth"], "weights only"),
    (["exercise1.py", "--resume", f"{R}/kd"], "exercise2"),
    (["exercise1.py", "--resume", f"{R}/kd/teacher"], "part of the run"),
    (["exercise2.py", "--resume", f"{R}/mlp"], "exercise1"),
    (["exercise1.py", "--resume", f"{R}/crafted_run"], "could run code"),
    (["exercise1.py", "--resume", f"{R}/lying_run"], "damaged"),
    (["exercise1.py", "--resume", f"{R}/list_run"], "is damaged (not a lab1 run config)"),
    # corrupt data
    (["exercise1.py", "--data_root", "{garbled}"], "corrupt"),
    (["exercise1.py", "--data_root", "{labels}"], "label"),
    (["exercise1.py", "--data_root", "{bomb}"], "more bytes"),
    (["exercise1.py", "--model", "resnet8", "--data_root", "{meta}"], "meta"),
    (["exercise1.py", "--model", "resnet8", "--data_root", "{evil_cifar}"], "run code"),
    # distillation
    (KD + ["--alpha", "1.5"], "--alpha"),
    (KD + ["--temperature", "0"], "--temperature"),
    (KS + ["--teacher_ckpt", "{base}/nowhere.pth"], "does not exist"),
    (KS + ["--teacher_ckpt", "{crafted}"], "could run code"),
    (KS + ["--teacher_ckpt", "{base}/legacy.pt"], "could run code"),
    (KS + ["--teacher_ckpt", "{base}/garbage.pt"], "corrupt"),
    (KS + ["--teacher_ckpt", "{base}/no_arch.pt"], "damaged"),
    (KS + ["--teacher_ckpt", "{base}/bad_shapes.pt"], "another architecture"),
    (KS + ["--teacher_ckpt", "{base}/nan.pt"], "NaN"),
    (KS + ["--teacher_ckpt", f"{R}/fashion/best.pt"], "another data set"),
    (KD + ["--teacher_logits", "x.pt"], "--teacher_logits"),
    (
        KS + ["--cache_teacher", "--teacher_ckpt", f"{R}/kd/teacher.pth", "--teacher_logits", "{base}/nowhere.pt"],
        "does not exist",
    ),
    (
        KS + ["--cache_teacher", "--teacher_ckpt", f"{R}/kd/teacher.pth", "--teacher_logits", "{base}/logits_other.pt"],
        "another teacher",
    ),
    (KS + ["--cache_teacher", "--teacher_ckpt", f"{R}/kd/teacher.pth", "--teacher_logits", "{crafted}"], "run code"),
    (KD + ["--teacher_amp", "fp16", "--device", "cpu"], "--teacher_amp fp16"),
    (KD + ["--pretrained", f"{R}/cnn/best.pt"], "--task finetune"),
    (KD + ["--k_folds", "3"], "--k_folds"),
    (KD + ["--s_layers", "0"], "--s_layers"),
    (KD + ["--study", "kd_grid", "--alphas", "2"], "--alphas"),
    # transfer
    (FT, "--pretrained"),
    (FT + ["--pretrained", f"{R}/mlp/best.pt"], "not a CNN"),
    (FT + ["--pretrained", "{crafted}"], "could run code"),
    (FT + ["--pretrained", "{base}/nan_cnn.pt"], "NaN"),
    (FT + ["--pretrained", f"{R}/cnn/best.pt", "--freeze_stages", "9"], "--freeze_stages"),
    (FT + ["--pretrained", f"{R}/cnn/best.pt", "--mode", "every"], "--mode"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[1:])[:70] for a, _ in CASES])
def test_one_line_exit_2_nothing_written(files, tmp_path, argv, message):
    args = [a.format(**files) for a in argv]
    save = tmp_path / "out"
    before = sorted(str(p) for p in (files["base"] / "runs").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in (files["base"] / "runs").rglob("*") if p.is_file()}
    extra = (
        []
        if "--resume" in args
        else [*QUIET]
        if any(a.startswith("--save_dir") for a in args)
        else ["--save_dir", str(save), *QUIET]
    )
    r = run_cli(args[0], *args[1:], *extra)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0], lines[0]
    assert not save.exists() or not any(save.iterdir())
    assert sorted(str(p) for p in (files["base"] / "runs").rglob("*")) == before  # nothing made or removed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing changed
    assert not MARKER.exists(), "a crafted file ran code"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 60


def test_wandb_problems_only_warn(files, tmp_path):
    (tmp_path / "netrc_dir").mkdir()
    r = run_cli(
        "exercise1.py",
        "--data_root",
        files["mnist"],
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--hidden_size",
        "8",
        "--epochs",
        "1",
        "--wandb",
        "auto",
        cwd=tmp_path,
        env={"NETRC": str(tmp_path / "netrc_dir"), "HOME": str(tmp_path), "WANDB_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--norm", "batch", "--batch_size", "7", "--subset", "100", "--val_split", "0.1"],  # a last batch of one
        ["--hidden_sizes", *["4"] * 200],  # an automatic name too long for the file system
        ["--seeds", "5"],  # one seed: trained with that seed
    ],
)
def test_edge_inputs_simply_work(files, tmp_path, argv):
    r = run_cli("exercise1.py", "--data_root", files["mnist"], "--save_dir", tmp_path, *argv, *QUIET)
    assert r.returncode == 0, r.stderr
    run = Path(r.stdout.strip().splitlines()[-1])
    assert len(run.name.encode()) <= 200
    if "--seeds" in argv:
        assert json.loads((run / "seed5" / "config.json").read_text())["train"]["seed"] == 5


MORE = [
    (E1 + ["--depths", "2"], "--study"),
    (E1 + ["--study", "mlp_depth", "--model", "resnet20"], "--study"),
    (E1 + ["--k_folds", "2", "--val_split", "0.5"], "--k_folds"),
    (E1 + ["--report"], "--report"),
    (E1 + ["--dropout", "1"], "--dropout"),
    (E1 + ["--label_smoothing", "1"], "--label_smoothing"),
    (E1 + ["--warmup_epochs", "5", "--epochs", "1"], "--warmup_epochs"),
    (E1 + ["--save_dir="], "--save_dir"),
    (FT + ["--pretrained", f"{R}/cnn/best.pt", "--temperature", "5"], "distillation flags"),
    (E1 + ["--seeds", "0", "1", "0"], "--seeds lists 0 more than once"),
    (E1 + ["--study", "mlp_depth", "--depths", "2", "2"], "--depths lists 2"),
    (KD + ["--study", "kd_grid", "--alphas", "0.5", "0.50"], "--alphas lists 0.5"),
    (E1 + ["--resume="], "--resume: it is empty"),
    (E1 + ["--run_name", ""], "--run_name: it is empty"),
    (KD + ["--teacher_ckpt", ""], "--teacher_ckpt: it is empty"),
    (E1 + ["--layers", "1", "1"], "--layers does not apply to FlexibleMLP"),
    (E1 + ["--model", "resnet20", "--width", "8"], "--width does not apply to resnet20"),
    (E1 + ["--model", "FlexibleCNN", "--dropout", "0.5"], "--dropout does not apply"),
    (E1 + ["--study", "mlp_depth", "--depth", "3"], "leave out --depth"),
    (E1 + ["--study", "cnn_depth", "--max_norm", "2"], "leave out --max_norm"),
    (KD + ["--t_layers", "2"], "--t_layers does not apply to the FlexibleMLP teacher"),
    (KD + ["--teacher_ckpt", f"{R}/kd/teacher.pth"], "--t_hidden_sizes 8 disagrees with the teacher"),
    (["exercise1.py", "--resume", f"{R}/edited_run"], "model.dropout"),
    (["exercise1.py", "--resume", f"{R}/no_last_run"], "last.pt is gone"),
    (["exercise1.py", "--resume", f"{R}/lying_last_run"], "(train)"),
    (["exercise2.py", "--resume", f"{R}/mlp"], "continue it with: python exercise1.py --resume /"),
    (
        KS + ["--cache_teacher", "--teacher_ckpt", f"{R}/kdc/teacher.pth", "--teacher_logits", "{base}/logits_nan.pt"],
        "damaged",
    ),
    (
        KS
        + ["--cache_teacher", "--teacher_ckpt", f"{R}/kdc/teacher.pth", "--teacher_logits", "{base}/logits_short.pt"],
        "damaged",
    ),
    (
        KS
        + ["--cache_teacher", "--teacher_ckpt", f"{R}/kdc/teacher.pth", "--teacher_logits", "{base}/logits_classes.pt"],
        "of 10 classes",
    ),
    (KS + ["--teacher_ckpt", "{base}/bad_norm.pt"], "damaged lab1 checkpoint"),
    (["exercise1.py", "--resume", f"{R}/progress_run", "--epochs", "2"], "damaged training state"),
    (["exercise1.py", "--resume", f"{R}/nan_last_run", "--epochs", "2"], "NaN"),
    (["exercise1.py", "--resume", f"{R}/bs0_run"], "batch_size = 0"),
    (["exercise1.py", "--resume", f"{R}/seeds/seed0"], "continue that: python exercise1.py --resume"),
    (["exercise1.py", "--resume", f"{R}/seeds", "--epochs", "3"], "finished parts"),
    (["exercise1.py", "--resume", f"{R}/seeds_ab"], "StudyConfig.seeds"),
    (["exercise1.py", "--resume", f"{R}/seeds_none", "--report"], "needs seeds"),
    (["exercise1.py", "--resume", f"{R}/seeds_replaced", "--report"], "train.lr differs"),
    (E1 + ["--run_name", "a\nb"], "--run_name"),
    (["exercise1.py", "--resume", f"{R}/mlp", "--workers", "2"], "--workers"),
    (E1 + ["--save_dir", R, "--run_name", "docs", "--overwrite"], "not a lab1 run folder"),
    (E1 + ["--save_dir", R, "--run_name", "mlp"], "already exists"),
    (E1 + ["--save_dir", R, "--run_name", ".x.lab1-tmp1"], "--run_name"),
    (["exercise1.py", "--data_root", "{sizes}"], "one image size"),
    (["exercise1.py", "--data_root", "{constant}"], "constant images"),
    (E1 + ["--momentum", "0.5"], "--momentum"),
    (E1 + ["--num_workers", "3"], "--num_workers"),
    (E1 + ["--augment", "--no_augment"], "--no_augment"),
    (E1 + ["--hidden_sizes", "8", "8", "--depth", "2"], "--hidden_sizes"),
    (E1 + ["--model", "resnet8", "--norm", "none"], "always uses batch norm"),
    (E1 + ["--norm", "batch", "--batch_size", "1"], "--batch_size 1"),
    (E1 + ["--depth", "20000"], "--depth"),
    (E1 + ["--skips", "1:0", "1:0"], "--skips lists"),
    (KD + ["--temperatures", "2", "3"], "kd_grid"),
    (KD + ["--study", "kd_grid"], "--temperatures"),
    (KD + ["--study", "kd_grid", "--temperatures", "2", "3", "--temperature", "4"], "--temperature"),
    (FT + ["--pretrained", f"{R}/cnn/best.pt", "--mode", "linear", "--freeze_stages", "1"], "--freeze_stages"),
    (E1 + ["--test_subset", "5"], "--test_subset 5 is smaller than the number of classes"),
    (E1 + ["--test_subset", "101"], "--test_subset 101 is larger than the test set"),
    (E1 + ["--test_subset", "-1"], "--test_subset"),
]
if not torch.cuda.is_available():
    MORE.append((["exercise1.py", "--resume", f"{R}/gpu_run"], "cannot run"))


@pytest.mark.parametrize("argv,message", MORE, ids=[" ".join(a[1:])[:70] for a, _ in MORE])
def test_flags_that_make_no_sense_together(files, tmp_path, argv, message):
    test_one_line_exit_2_nothing_written(files, tmp_path, argv, message)


def test_overwrite_never_destroys_a_run_in_training(files, tmp_path):
    from conftest import lock_held_elsewhere

    ok = run_cli(
        "exercise1.py",
        "--data_root",
        files["mnist"],
        "--save_dir",
        tmp_path,
        "--run_name",
        "r",
        "--hidden_size",
        "8",
        *QUIET,
    )
    assert ok.returncode == 0
    for held in ({}, {"name": ".busy", "shared": True}):  # training in it; working in it outside a training
        with lock_held_elsewhere(tmp_path / "r", **held):
            p = run_cli(
                "exercise1.py",
                "--data_root",
                files["mnist"],
                "--save_dir",
                tmp_path,
                "--run_name",
                "r",
                "--hidden_size",
                "8",
                "--overwrite",
                *QUIET,
            )
            assert p.returncode == 2 and "another process" in p.stderr, p.stderr
            assert (tmp_path / "r" / "summary.json").exists()
