"""Data-parallel training over torch.distributed, for runs started by ``torchrun`` (or ``aigc-kit run --nproc N``).

Every process holds the same networks and optimizers. Each phase's gradients
are averaged over the processes after its backward pass, in one flattened
all-reduce (DistributedDataParallel's arithmetic, without its module
wrapper, which cannot follow networks that are trained in one phase and
frozen in the next). Each process reads its own share of every batch
(:mod:`aigc_kit.core.data`); only process 0 writes files. Backends: NCCL on
CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: one process (the default) or ``world_size`` of them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Process 0 writes the run directory."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The CUDA device of this process (``LOCAL_RANK``), or ``device`` unchanged on a CPU."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


def from_environment(device: torch.device) -> Distributed:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ...), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown(processes: Distributed) -> None:
    """Wait for every process (process 0 may still be writing), then leave the process group cleanly."""
    if processes.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Replace each gradient by its mean over the processes (one all-reduce for all of them)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return
    flat = torch._utils._flatten_dense_tensors(gradients)
    dist.all_reduce(flat)
    flat /= world_size
    for gradient, averaged in zip(gradients, torch._utils._unflatten_dense_tensors(flat, gradients), strict=True):
        gradient.copy_(averaged)


def broadcast_state(modules: list[nn.Module]) -> None:
    """Make every process's parameters and buffers process 0's."""
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each logged value over the processes (every process must call this)."""
    if not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return {key: float(value) / dist.get_world_size() for key, value in zip(keys, stacked.tolist(), strict=True)}


def all_agree(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true in every process, so that all take the same branch."""
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def any_process(number: int, device: torch.device) -> int:
    """The largest ``number`` over the processes (a stop signal seen by any of them)."""
    value = torch.tensor([number], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (small Python objects: RNG states)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch across the processes.

    Works on every device and backend (torch's own ``SyncBatchNorm`` needs an
    accelerator): the per-channel sums are all-reduced with autograd, so
    gradients flow through the shared statistics as in one big batch.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=torch.float32)
        sums = torch.cat([x.float().sum(dims), x.float().square().sum(dims), count.reshape(1)])
        sums = all_reduce(sums)
        channels = x.shape[1]
        total = sums[-1]
        mean = sums[:channels] / total
        variance = sums[channels:2 * channels] / total - mean.square()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None: a cumulative average, as BatchNorm does
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean), momentum)
                unbiased = variance.detach() * total / (total - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var), momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        normalised = (x.float() - mean.reshape(shape)) * torch.rsqrt(variance.reshape(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.reshape(shape) + self.bias.reshape(shape)
        return normalised.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`SyncBatchNorm` with the same state."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        tensors = [*module.parameters(), *module.buffers()]
        return synced.to(tensors[0].device) if tensors else synced
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
