"""Checkpoints: written atomically (temporary file, fsync, rename), checked when read.

A checkpoint is a dict with "format": FORMAT, "model" (state_dict), "arch" (model config, input shape,
classes, data set, input normalisation) and, for training checkpoints, optimizer / scheduler / scaler / RNG
states and history.
"""
import os
import random
from pathlib import Path

import torch

FORMAT = "lab1-checkpoint-v1"


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, or does not fit; one-line message."""


def atomic_write(path, write):
    """Call write(tmp_path), fsync it, then rename over `path`: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path, ckpt):
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, text file: all "not a readable checkpoint"
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lab1 checkpoint")
    return ckpt


def load_weights(model, ckpt, path="checkpoint"):
    """Load ckpt["model"] into model, or say in one line why it does not fit."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{path} holds another architecture: {first}") from None


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
