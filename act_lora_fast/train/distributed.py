"""torchrun helpers: process-group setup from the environment, samplers, reductions, rank-0 writes, and FSDP2.

Launch: ``torchrun --nproc-per-node N -m act_lora_fast.cli train ...`` (multi-node: add ``--nnodes``,
``--node-rank`` and ``--rdzv-endpoint`` as usual). NCCL on CUDA, gloo on CPU. Every rank profiles with
all-reduced activation norms, so every rank selects the same layers; the training set is split with a
`DistributedSampler`; evaluation shards the dev set without padding and gathers the predictions, so the
metrics are exactly those of a single-process run; only rank 0 writes files and prints.

Data parallel is DDP (the model replicated on every rank) or, with ``--fsdp``, FSDP2 (`shard_model`:
``fully_shard`` on each Transformer block, then on the root). LoRA is injected before sharding, so each
adapter is built on the full shapes and sharded with its block; inside a block's forward FSDP2 has gathered
the block's weights, so the fused op reads whole, plain tensors (a DTensor that reaches it is refused with
a clear error). The adapter is gathered for saving (`save_sharded_adapter`: every rank takes part, rank 0
writes PEFT's format).
"""
import contextlib
import dataclasses
import datetime
import math
import os

import torch
import torch.distributed as dist

from .. import _dist
from ..model.adapters import PREFIX, WEIGHTS_NAME, adapter_tensors, save_adapter
from ..model.anatomy import find_blocks


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device=None, timeout_s=600):
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (else a single-process context).

    `device`: ``None``/"auto" (CUDA if available, each rank on ``cuda:LOCAL_RANK``), "cpu", or "cuda".
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank, world_size, local_rank, device)


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx):
    if ctx.is_distributed:
        dist.barrier()


def mean_over_ranks(value, ctx):
    """The mean of a Python number over ranks (e.g. the epoch's training loss)."""
    if not ctx.is_distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=ctx.device if ctx.device.type == "cuda" else "cpu")
    return float(_dist.all_reduce_sum(tensor).item()) / ctx.world_size


def sum_over_ranks(tensor, ctx):
    """A float64 CPU tensor summed over ranks (returned on the CPU)."""
    if not ctx.is_distributed:
        return tensor
    moved = tensor.to(ctx.device if ctx.device.type == "cuda" else "cpu", dtype=torch.float64)
    return _dist.all_reduce_sum(moved).cpu()


def max_over_ranks(value, ctx):
    """The max of a Python number over ranks (memory peaks, step times: the slowest rank sets the pace)."""
    if not ctx.is_distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of examples of similar length, the batches in random order; sharded across ranks.

    Each epoch: shuffle, cut into mega-batches of `mega` batches, sort each mega-batch by length and cut it
    into batches, then shuffle the batches. Padding (and so compute) drops severalfold on short-sentence
    tasks. Unlike transformers' LengthGroupedSampler, the batch order is shuffled too: running each
    mega-batch from long to short sentences cost SST-2 about 2 points in one-epoch runs.
    Under DDP rank r takes batches r, r + world, ... (the list padded by repetition to a whole round).
    """

    def __init__(self, lengths, batch_size, *, seed, rank=0, world_size=1, mega=50):
        if not lengths:
            raise ValueError("lengths is empty: no examples to batch")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.rank, self.world_size, self.mega = rank, world_size, mega
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _all_batches(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.mega * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        rounds = math.ceil(len(batches) / self.world_size)
        return (batches * 2)[:rounds * self.world_size] if len(batches) % self.world_size else batches

    def __iter__(self):
        return iter(self._all_batches()[self.rank::self.world_size])

    def __len__(self):
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world_size)


def train_sampler(dataset, ctx, *, seed, shuffle=True):
    """A `DistributedSampler` under DDP (call ``set_epoch`` each epoch), else a seeded random sampler."""
    if ctx.is_distributed:
        return torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                                   shuffle=shuffle, seed=seed, drop_last=False)
    if not shuffle:
        return torch.utils.data.SequentialSampler(dataset)
    return torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))


def eval_shard(n, ctx):
    """This rank's indices of an n-example evaluation set: rank, rank + world, ... (no padding)."""
    return list(range(ctx.rank, n, ctx.world_size))


def gather_predictions(indices, predictions, ctx):
    """Gather (index, prediction) pairs from all ranks and return the predictions in index order."""
    pairs = list(zip(indices, predictions))
    if ctx.is_distributed:
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, pairs)
        pairs = [pair for part in gathered for pair in part]
    pairs.sort(key=lambda pair: pair[0])
    return [prediction for _, prediction in pairs]


def broadcast_object(obj, ctx):
    """Rank 0's `obj` on every rank (e.g. a selection made where only rank 0 may choose)."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------- FSDP2
def is_sharded(model):
    """Whether `model` was sharded with FSDP2's ``fully_shard`` (at its root)."""
    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model, *, reshard_after_forward=True, param_dtype=None, blocks=None):
    """FSDP2 in place: ``fully_shard`` on each Transformer block (see `find_blocks`), then on the root.

    Inject LoRA first (`apply_act_lora`, `load_adapter`, or PEFT's ``get_peft_model`` under `patch_peft`):
    adapters are then built on the full shapes and sharded with their block, and the fused op runs inside
    each block's forward on its gathered weights. `reshard_after_forward`: free each block's gathered weights
    after its forward (less memory; gathered again for the backward) or keep them (less communication).
    `param_dtype` (e.g. torch.bfloat16): FSDP2's mixed precision, weights gathered in that dtype and gradients
    reduced in float32. Needs a process group (torchrun); the mesh spans all ranks, on CUDA under NCCL.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model needs a process group: launch with torchrun (WORLD_SIZE > 1)")
    if is_sharded(model):
        raise RuntimeError("the model is already sharded (fully_shard was applied to it)")
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    options = {"mesh": init_device_mesh(device_type, (dist.get_world_size(),)),
               "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in find_blocks(model, blocks).blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def gradient_sync(model, on):
    """Whether the next backward reduces gradients across ranks (off for all but the last micro-batch of a
    gradient-accumulation step): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``."""
    if is_sharded(model):
        model.set_requires_gradient_sync(on)
        return contextlib.nullcontext()
    if on or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def save_sharded_adapter(model, path, ctx, **options):
    """Gather an FSDP-sharded model's adapter (every rank must call this) and write it on rank 0 (`save_adapter`)."""
    tensors = {key: tensor.full_tensor() if _dist.is_dtensor(tensor) else tensor
               for key, tensor in adapter_tensors(model).items()}
    if ctx.is_main:
        save_adapter(model, path, tensors=tensors, **options)


def load_sharded_adapter_weights(model, path):
    """Copy the weights of a saved adapter (this model's own, from `save_sharded_adapter`) into an FSDP-sharded
    model's shards (every rank reads the file and keeps its shard)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights = load_file(os.path.join(os.fspath(path), WEIGHTS_NAME))
    state = {key[len(PREFIX):]: tensor for key, tensor in weights.items()}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
