"""Everything device-specific lives here: device and dtype choice, autocast, torch.compile, and the
process group (gloo on CPU, NCCL on CUDA). The rest of the library asks this module and never checks
for CUDA itself, so the same code runs on a laptop CPU and on 8xH100.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .config import RunConfig


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype          # autocast dtype (float32 = no autocast)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(run: RunConfig) -> torch.device:
    if run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device = 'cuda' but no CUDA device is available; use run.device=cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def pick_dtype(run: RunConfig, device: torch.device) -> torch.dtype:
    if run.dtype == "auto":
        # bf16 autocast pays on GPUs; on our CPUs it measured slower than float32 (LOG.md).
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[run.dtype]


def setup(run: RunConfig) -> Runtime:
    """Device, dtype and (under torchrun) the process group. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(run)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, pick_dtype(run, device), rank, world, local)


def teardown(barrier: bool = False) -> None:
    """Take the process group down. barrier=True (a job that ended normally on every rank): wait for every
    rank first, so none destroys the group while another still talks on it (a gloo rank 1 aborted in C++,
    "terminate called without an active exception", when rank 0 was still writing). Not after an error,
    where the other ranks may never arrive."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def autocast(rt: Runtime) -> Iterator[None]:
    if rt.dtype == torch.float32:
        yield
    else:
        with torch.autocast(rt.device.type, dtype=rt.dtype):
            yield


def maybe_compile(model: torch.nn.Module, run: RunConfig) -> torch.nn.Module:
    """torch.compile when asked; the schedule is static, so one graph per schedule variant."""
    return torch.compile(model, dynamic=False) if run.compile else model


def all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rng_state(rt: Runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if rt.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(rt.device)
    return state


def set_rng_state(state: dict, rt: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and rt.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], rt.device)
