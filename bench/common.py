"""What the bench scripts share: the seeded model, exercise1's epoch and the bare loop, timed rounds, naming the
machine, peak memory. (The scripts put the project root on sys.path before importing this.)"""

import os
import platform
import resource
import time

import torch
import torch.nn.functional as F

from device import place
from engine import train_one_epoch
from models import build_model, is_cnn


def sync(device):
    """Wait for queued CUDA work, so that a timer read afterwards covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device):
    """The GPU's name, or the CPU's with its core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine() or 'CPU'} ({os.cpu_count()} cores)"


def peak_rss_mib():
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seeded_model(cfg, ds, device):
    """`cfg`'s model built from seed 0 and placed as exercise1 places it (channels_last for CNNs on CUDA)."""
    torch.manual_seed(0)
    return place(build_model(cfg, ds.in_shape, ds.num_classes), device, is_cnn(cfg.name))


def train_epoch(model, loader, opt, loss_fn, autocast, epoch, desc="train"):
    """exercise1's epoch (engine.train_one_epoch over an engine.Optim), without progress-bar reads of the device."""
    loader.set_epoch(epoch)
    return train_one_epoch(model, loader, opt, loss_fn, autocast, epoch, log_every=10**9, desc=desc)


def bare_epoch(model, batches, optimizer, autocast, epoch=None):
    """The model's own step: forward, loss, backward and optimizer step over (x, y) batches prepared in advance
    (no slicing, augmentation, metrics, gradient norms, schedule or scaler; every epoch the same batches)."""
    for x, y in batches:
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed_rounds(steps, repeats, device):
    """Seconds of each step(epoch) of `steps` ({name: step}) in `repeats` rounds after one warm-up round (it warms
    up allocators and kernels, and compiles), the steps taking turns within a round. -> {name: [seconds]}"""
    times = {name: [] for name in steps}
    for epoch in range(repeats + 1):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step(epoch)
            sync(device)
            if epoch:
                times[name].append(time.perf_counter() - t0)
    return times
