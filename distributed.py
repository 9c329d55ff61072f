"""Data parallelism under torchrun: `torchrun --nproc_per_node N exercise1.py ...`.

Every rank holds the whole data set and takes its slice of each global batch (--batch_size is the global
batch); DistributedDataParallel averages the gradients; training metrics are all-reduced; validation and test
sets are evaluated whole on every rank (identical weights give identical results). Only rank 0 prints, shows
progress bars, writes the run folder and logs to W&B. NCCL on CUDA, gloo on the CPU.
"""

import os
import sys

import torch
import torch.distributed as dist


def launched_by_torchrun():
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup():
    """Join the process group when started by torchrun with several processes; silence stdout on other ranks."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    if not is_main():
        sys.stdout = open(os.devnull, "w")


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def all_reduce_sum(*tensors):
    """In place, across ranks; a no-op in a single process."""
    if world() > 1:
        for t in tensors:
            dist.all_reduce(t)


def broadcast(obj):
    """rank 0's obj on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model):
    if world() == 1:
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
