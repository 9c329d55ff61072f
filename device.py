"""Where and how a run computes: the device and mixed precision a flag asks for, the autocast context, the memory
layout of CNNs, and the random-number state a checkpoint keeps."""

import random
from functools import partial

import torch

from errors import UsageError


def channels_last_for(device, cnn):
    """CNNs on CUDA run in channels_last (NHWC) memory, the layout cuDNN's tensor-core convolutions prefer.

    Not on the CPU, where NHWC saved little and the backward pass of a channels_last 1x1 stride-2 convolution
    from 4 channels crashed or hung in torch 2.14 (README, Measured speed).
    """
    return str(device).startswith("cuda") and cnn


def place(model, device, cnn):
    """Move `model` to `device`, in channels_last memory where channels_last_for says so; returns it."""
    model.to(device)
    if channels_last_for(device, cnn):
        model.to(memory_format=torch.channels_last)
    return model


def make_autocast(cfg):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    return partial(torch.autocast, device_type=device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def resolve_device(request):
    if request == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if request == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    if request == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no MPS device is available here")
    return request


def resolve_amp(request, device, flag_name="--amp"):
    if not device.startswith("cuda"):
        if request == "fp16":
            raise UsageError(f"{flag_name} fp16 needs a CUDA device; use bf16 or off here")
        return "off" if request == "auto" else request
    if request == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return request


def rng_state():
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
