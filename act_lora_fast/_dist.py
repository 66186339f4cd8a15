"""The few torch.distributed facts the library needs below the training loop (which owns the process group)."""
import os
import sys

import torch


def is_distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank():
    """This process's rank: the process group's, else torchrun's RANK (set before a group exists), else 0."""
    if is_distributed():
        return torch.distributed.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size():
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on rank 0, and in a process that torchrun did not start."""
    return rank() == 0


def all_reduce_sum(tensor):
    """Sum `tensor` over the ranks in place (a no-op in a single process); returns it."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def is_dtensor(tensor):
    """Whether `tensor` is a DTensor (an FSDP2 shard, a tensor-parallel piece); never imports torch.distributed.tensor
    (when nothing has imported it, no DTensor exists)."""
    module = sys.modules.get("torch.distributed.tensor")
    cls = getattr(module, "DTensor", None)
    return cls is not None and isinstance(tensor, cls)
