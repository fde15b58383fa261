"""Data-parallel training helpers: the process group under ``torchrun``, and the few collectives ``train``
needs (a mean over ranks, "does any rank say yes", every rank's RNG state, results gathered in order).

With one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every helper is the identity and nothing is
initialised. Under ``torchrun --nproc_per_node N`` the group uses gloo on the CPU and nccl on CUDA; with
``--device cuda`` each process takes ``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``; ``created``: this
    process initialised the group (and destroys it at the end)."""

    rank: int
    world: int
    device: torch.device
    created: bool

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes every file of the run."""
        return self.rank == 0


def setup(device: torch.device) -> DistContext:
    """Initialise the process group when launched by torchrun; a CUDA ``device`` without an index
    becomes ``cuda:<LOCAL_RANK>``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")
    if world <= 1:
        return DistContext(0, 1, device, False)
    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), device, created)


def teardown(ctx: DistContext) -> None:
    if ctx.created:
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        dist.barrier()


def all_mean(x: float, ctx: DistContext) -> float:
    """The mean of ``x`` over the ranks."""
    if ctx.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on one of them."""
    if ctx.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rng(ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's CPU RNG state, in rank order (a checkpoint restores each rank's own)."""
    state = torch.get_rng_state()
    if ctx.world == 1:
        return [state]
    out = [torch.empty_like(state) for _ in range(ctx.world)]
    dist.all_gather_object(out, state)
    return out


def gather_in_order(indices: Sequence[int], items: Sequence[Any], ctx: DistContext) -> list[Any]:
    """Every rank's ``items`` (``items[i]`` belongs to example ``indices[i]``) merged in example order."""
    if ctx.world == 1:
        return list(items)
    parts: list[Any] = [None] * ctx.world
    dist.all_gather_object(parts, list(zip(indices, items)))
    return [x for _, x in sorted((p for part in parts for p in part), key=lambda p: p[0])]
