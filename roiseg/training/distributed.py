"""Multi-process training with ``torchrun``: process group, sharding of images, DDP, reductions.

``uv run torchrun --nproc_per_node N -m roiseg train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`init_distributed` reads them and joins the group:
``nccl`` when training on CUDA (rank ``r`` uses ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without
those variables (a plain ``roiseg train``) everything here degrades to a single process.

* Each epoch the images are permuted with a ``torch.Generator`` seeded ``seed + epoch`` and dealt
  out round-robin (:class:`ShardSampler`); training shards are padded to equal length so every rank
  runs the same number of steps (DDP's gradient all-reduce needs that).
* Validation shards are not padded; metric sums are added up with :func:`all_reduce_sum`.
* Only rank 0 (:attr:`DistContext.is_main`) writes checkpoints, metrics and pictures.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)
"""Long enough for rank 0 to extract and cache a large validation set while others wait."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device and the backend (``None`` = single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto|cpu|cuda|cuda:N`` -> the torch device training runs on (``auto``: CUDA when usable).

    Under torchrun a bare ``cuda``/``auto`` becomes ``cuda:LOCAL_RANK``.
    """
    from roiseg.features.providers import parse_device

    kind, index = parse_device(device)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but torch sees no usable CUDA device")
    index = index if ":" in str(device) else local_rank
    if index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: rank needs cuda:{index} but {torch.cuda.device_count()} device(s) are visible")
    return torch.device("cuda", index)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; otherwise a single-process context."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT, **kwargs)
    LOG.info("rank %d/%d (local %d) on %s, backend %s", rank, world, local_rank, dev, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a copy; ``t`` itself for a single process).

    Reduced on the context's device (nccl needs CUDA tensors; float64 sums stay exact for counts).
    """
    if not ctx.distributed:
        return t
    buf = t.detach().to(ctx.device).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model``."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ShardSampler(Sampler[int]):
    """Indices of one rank's share of ``n`` items for an epoch (a deterministic ``DistributedSampler``).

    ``shuffle``: permute with ``torch.Generator().manual_seed(seed + epoch)`` (call :meth:`set_epoch`).
    ``pad``: repeat leading indices so that ``n`` becomes a multiple of ``world_size`` (training);
    without it ranks may get one item fewer (validation, where nothing may be counted twice).
    ``repeats`` (with ``shuffle``): item ``i`` enters the pool ``repeats[i]`` times and the epoch is the first
    ``n`` of the shuffled pool, so an item with 2 is drawn about twice as often as one with 1 at the same epoch
    length (all 1, or empty: every item once). Rank ``r`` takes positions ``r, r + world_size, ...`` of the
    (padded) order.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 pad: bool = True, repeats: Sequence[int] = ()) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if len(repeats) and (len(repeats) != n or min(repeats) < 1):
            raise ValueError(f"repeats must hold {n} counts >= 1")
        self.repeats = [int(r) for r in repeats] if any(r != 1 for r in repeats) else []
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)
        self.shuffle, self.seed, self.pad = shuffle, int(seed), pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """All ``n`` indices (padded when ``pad``) in this epoch's order, before sharding."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            pool = [i for i, r in enumerate(self.repeats) for _ in range(r)] or list(range(self.n))
            order = [pool[j] for j in torch.randperm(len(pool), generator=g)[: self.n].tolist()]
        else:
            order = list(range(self.n))
        if self.pad and self.n and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order += (order * (extra // self.n + 1))[:extra]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


__all__ = [
    "DistContext", "ShardSampler", "all_reduce_sum", "barrier", "broadcast_object", "cleanup",
    "init_distributed", "resolve_device", "wrap_model",
]
