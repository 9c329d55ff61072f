"""Files a run writes and reads: atomic writes, the one safe checkpoint loader, run-folder locks.

A checkpoint is a dict with "format": FORMAT, "model" (state_dict) and "arch" (model config, input shape,
classes, data set, input normalisation). Published models (best.pt, teacher.pth, ...) hold only that;
last.pt adds the whole training state (optimizer, scheduler, scaler, RNG, progress, and the best weights
when they are not the current ones), so that one file always says which weights are best.
Loading never runs code from a file: everything goes through torch.load(weights_only=True).
"""

import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from datasets import check_norm
from errors import CheckpointError
from files import atomic_write
from flags import from_dict
from models import ModelConfig, build_model, is_cnn

FORMAT = "lab1-checkpoint-v1"


def _nbytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return sum(_nbytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0


def save_checkpoint(path, ckpt):
    atomic_write(path, lambda tmp: _save(ckpt, tmp), needed=_nbytes(ckpt))


def _save(ckpt, tmp):
    """torch.save through a Python file: a refused write then keeps its OSError (errno) as the RuntimeError's
    context, where torch's own file writer would report only "file write failed"."""
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)


def load_file(path, what="checkpoint", mmap=False):
    """torch.load with weights_only=True: tensors and plain data only; anything else is refused, not run.
    mmap: tensors stay on disk until read (for a look at the plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        if not culprit:
            raise CheckpointError(f"{what} {path} is corrupt or not a checkpoint (not loadable as weights)") from None
        raise CheckpointError(
            f"{what} {path} holds Python objects that could run code ({culprit[1]}); lab1 loads "
            "only tensors and plain data and refuses it (an old lab1 checkpoint of this kind cannot "
            "be read safely: retrain it)"
        ) from None
    except Exception as e:  # truncated zip, garbage, a text file: all "not a readable checkpoint"
        raise CheckpointError(f"{what} {path} is corrupt or not a checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, need=("model", "arch"), mmap=False):
    """A lab1 checkpoint, checked for the format tag and the keys `need`."""
    ckpt = load_file(path, mmap=mmap)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lab1 checkpoint")
    missing = [k for k in need if k not in ckpt]
    if not missing and "arch" in need and not _valid_arch(ckpt["arch"]):
        missing = ["a valid arch"]
    if missing:
        raise CheckpointError(f"{path} is a damaged lab1 checkpoint (missing {', '.join(missing)})")
    return ckpt


def _valid_arch(arch):
    """What rebuilds and feeds the model: a model config, an image shape (C, H, W) of sensible size, a class count,
    and an input normalisation (if recorded) with one mean and one std > 0 per channel."""
    try:
        c, h, w = arch["in_shape"]
        ok = all(type(v) is int for v in (c, h, w)) and 1 <= c <= 4 and 1 <= h <= 4096 and 1 <= w <= 4096
        ok = ok and type(arch["num_classes"]) is int and 2 <= arch["num_classes"] <= 100_000
        name = arch["model"].get("name")
        ok = ok and arch.get("is_cnn", is_cnn(name)) == is_cnn(name)
        if ok and arch.get("input_norm"):
            check_norm(arch["input_norm"])
            ok = len(arch["input_norm"][0]) == c
        return ok
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def load_weights(model, state, path="checkpoint"):
    """Load a state_dict into model, or say in one line why it does not fit."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        lines = str(e).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(e)
        raise CheckpointError(f"{path} holds weights of another architecture: {first[:200]}") from None


def arch_of(cfg: ModelConfig, ds, dataset, norm):
    """What a checkpoint needs to rebuild the model and feed it, including the input normalisation."""
    return {
        "model": asdict(cfg),
        "in_shape": list(ds.in_shape),
        "num_classes": ds.num_classes,
        "classes": list(ds.classes),
        "dataset": dataset,
        "is_cnn": is_cnn(cfg.name),
        "input_norm": norm,
    }


def model_from_arch(arch, path="checkpoint"):
    try:
        return build_model(from_dict(ModelConfig, arch["model"]), tuple(arch["in_shape"]), arch["num_classes"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} describes no buildable model ({str(e).splitlines()[0][:120]})") from None


def model_from_checkpoint(path, ckpt):
    """The model a checkpoint holds, with its weights; NaN or infinite weights are refused in one line."""
    model = model_from_arch(ckpt["arch"], path)
    load_weights(model, ckpt["model"], path)
    check_finite(model, path)
    return model


def check_finite(model, path):
    """Weights that are all finite numbers of the model's own dtypes, else one line."""
    state = model.state_dict()
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise CheckpointError(f"{path} holds NaN or infinite weights")
