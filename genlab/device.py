"""Which device a command runs on, and the per-device settings that go with it.

`resolve_device` is the one place a device name is read: `auto`, `cpu`, `cuda`
or `cuda:N`. A bare `cuda` is the current process's GPU: `cuda:0`, or under
torchrun `cuda:LOCAL_RANK`, so each process of a node has a GPU of its own.
"""

from __future__ import annotations

import os

import torch

from genlab import parallel
from genlab.errors import GenlabError


def resolve_device(name: str = "auto", world: int | None = None, local_rank: int | None = None) -> torch.device:
    """The torch.device for a name; always indexed for CUDA (torch.cuda.set_device needs the index)."""
    if world is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    if local_rank is None:
        local_rank = parallel.local_rank()
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise GenlabError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise GenlabError(f"device {name} requested but CUDA is not available here (use --device cpu)")
    count = torch.cuda.device_count()
    if name == "cuda":
        index = local_rank if world > 1 else 0
    else:
        text = name[len("cuda:"):]
        if not text.isdigit():
            raise GenlabError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N with N a number)")
        if world > 1:
            raise GenlabError(f"--device {name} would put all {world} processes on one GPU; under torchrun use "
                              f"--device cuda (each process takes the GPU of its local rank)")
        index = int(text)
    if index >= count:
        raise GenlabError(f"device cuda:{index} requested but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def configure(device: torch.device, deterministic: bool = False) -> None:
    """Make `device` the current one; on CUDA enable TF32, and cuDNN autotuning unless `deterministic`.

    TF32 runs fp32 matmuls and convolutions on the tensor cores, with fp32's
    range and a 10-bit mantissa. `deterministic` asks for kernels that give the
    same bits on every run (exact resume on a GPU), at some cost in speed.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # set either way: a process may train twice
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def backend_kind(name: str) -> str:
    """'cuda' or 'cpu': what torch.distributed's backend is chosen for (NCCL or gloo), without touching a GPU."""
    name = (name or "auto").strip().lower()
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"
