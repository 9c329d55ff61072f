"""What the bench scripts share: waiting for the GPU, naming the machine, peak memory."""
import os
import platform
import resource

import torch


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
