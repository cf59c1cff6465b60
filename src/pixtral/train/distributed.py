"""torch.distributed for training: process group from torchrun's environment, DDP or FSDP2 wrapping,
and the few collectives the loop needs. One process without torchrun is world size 1, no process group.

Backends: NCCL on CUDA, gloo on CPU. Multi-node: torchrun --nnodes N --node-rank R --rdzv-backend c10d
--rdzv-endpoint HOST:PORT (see docs/training.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint
from torch.nn.parallel import DistributedDataParallel as DDP

from pixtral.engine.device import resolve_device
from pixtral.errors import InputError
from pixtral.train.config import TrainConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        dev = resolve_device(device)  # auto | cpu | cuda | cuda:N, and that it exists here
    except InputError as e:
        raise TrainConfigError(f"train config: {e}") from e
    use_cuda = dev.type == "cuda"
    if use_cuda:
        if world_size > 1:  # torchrun: rank r of a node takes that node's GPU r
            if ":" in device:
                raise TrainConfigError(
                    f"train config: device={device!r} names one GPU but {world_size} ranks run: use "
                    "device='cuda' (each rank takes cuda:LOCAL_RANK) or CUDA_VISIBLE_DEVICES"
                )
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over ranks (float64)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder and vision block in the backward pass (composable API: names unchanged)."""
    for block in _blocks(model):
        checkpoint(block)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [*model.vision_encoder.transformer.layers, *model.layers]


def wrap(root: nn.Module, model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP around `root`, or FSDP2: every vision and decoder block, the vision encoder, the adapter, and
    `root` (the loss module holding `model`) each become a fully_shard unit. Returns what to call."""
    if not info.distributed:
        return root
    if strategy == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(root, device_ids=device_ids)
    # here, not at the top: FSDP2's public API needs torch >= 2.6 (DDP does not)
    from torch.distributed.fsdp import fully_shard

    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model.vision_encoder)
    fully_shard(model.vision_language_adapter)
    fully_shard(root)
    return root


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and not isinstance(module, nn.ModuleList) else module
