"""Data parallelism over torch.distributed (launched by torchrun), and noise that shards with the data.

Every process holds a full copy of the model and a contiguous slice of each
global batch. After each backward pass the gradients are averaged with one
all-reduce, which is what DistributedDataParallel does; doing it at the
optimizer step keeps families with several optimizers (GANs) free of wrappers.

Per-example noise is drawn for the whole global batch on every process (they
share one RNG stream) and each keeps its slice, so a run's numbers do not
depend on how many processes train it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_kind: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _shard(full: torch.Tensor) -> torch.Tensor:
    w = world()
    if w == 1:
        return full
    n = full.shape[0] // w
    return full[rank() * n: (rank() + 1) * n]


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like this process's batch `x`."""
    return _shard(torch.randn((x.shape[0] * world(), *x.shape[1:]), device=x.device, dtype=x.dtype))


def rand_like(x: torch.Tensor) -> torch.Tensor:
    return _shard(torch.rand((x.shape[0] * world(), *x.shape[1:]), device=x.device, dtype=x.dtype))


def randint(high: int, n: int, device) -> torch.Tensor:
    """n integers in [0, high) for this process's n examples."""
    return _shard(torch.randint(0, high, (n * world(),), device=device))


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors across processes in place, with one all-reduce of a flat buffer."""
    w = world()
    if w == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= w
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_max_(t: torch.Tensor) -> None:
    """The element-wise maximum over processes, in place."""
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


def broadcast_parameters(module: torch.nn.Module) -> None:
    if world() > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def any_flag(flag: bool) -> bool:
    """True on every process if it is true on any (used to stop all ranks at the same step)."""
    if world() == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()
